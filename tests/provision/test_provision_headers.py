"""``fleet provision``'s requests as a strict RFC 9483 server checks them (``strict_lwcmp``,
pyasn1-alt-modules), sent to a real ``fleet ca serve`` through a recording proxy: the MAC sender
names the row's reference (never CN=CN=...), an IDevID signed by a vendor intermediate sends that
intermediate, and the manifest's header columns reach the messages."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import strict_lwcmp as strict
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from provision_helpers import CaProcess, key_pem, name, pem, run_provision, secret_for
from recording_proxy import recording_proxy

from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.provision.manifest import ManifestError, parse_manifest


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[0] if issuer else name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer[1] if issuer else key, hashes.SHA256())
    )


def vendor_hierarchy(folder: Path) -> tuple[x509.Certificate, Path, Path]:
    """Vendor root -> vendor issuing CA -> IDevID: (root, IDevID PEM followed by the issuing CA, key)."""
    root_key, issuing_key, device_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("Vendor Root", root_key, None, ca=True)
    issuing = _cert("Vendor Issuing CA", issuing_key, (root.subject, root_key), ca=True)
    idevid = _cert("IDevID v1", device_key, (issuing.subject, issuing_key), ca=False)
    (folder / "vendor-root.pem").write_bytes(pem(root))
    cert_path, key_path = folder / "v1-idevid.pem", folder / "v1-idevid.key"
    cert_path.write_bytes(pem(idevid) + pem(issuing))
    key_path.write_bytes(key_pem(device_key))
    return root, cert_path, key_path


def test_manifest_header_columns(tmp_path: Path) -> None:
    _, cert, key = vendor_hierarchy(tmp_path)
    [a, b, v] = parse_manifest(
        "id,subject,ref,secret,sender,recipient,message_time,max_iterations,cert,key\n"
        "a,/CN=a,CN=gnb-a,pass:x,,/CN=Operator CA,false,300000,,\n"
        "b,/CN=b,hex:0a0b,pass:x,/O=Op/CN=b-sender,,true,,,\n"
        f"v,/CN=v,,,,,,,{cert},{key}\n", base=tmp_path)
    pa, pb, pv = a.protector(), b.protector(), v.protector()
    assert isinstance(pa, MacProtector) and pa.sender_kid == b"CN=gnb-a" and pa.sender_name is None
    assert a.header_fields()["message_time"] is False and a.header_fields()["max_iterations"] == 300_000
    assert "recipient" in a.header_fields()
    assert isinstance(pb, MacProtector) and pb.sender_kid == b"\x0a\x0b"
    assert pb.sender_name == x509.Name.from_rfc4514_string("CN=b-sender,O=Op").public_bytes()
    assert b.header_fields() == {"message_time": True, "max_iterations": None}
    # The IDevID's file carries its issuing CA: it goes after the IDevID in extraCerts.
    assert isinstance(pv, SignatureProtector) and len(pv.extra_certs) == 2


@pytest.mark.parametrize(("row", "problem"), [
    ("a,/CN=a,pass:x,,maybe,,", "line 2: message_time: must be true or false, not 'maybe'"),
    ("a,/CN=a,pass:x,,,0,", "line 2: max_iterations: must be an integer >= 1, not '0'"),
    ("a,/CN=a,pass:x,/XX=1,,,", "line 2: sender: cannot parse name component 'XX=1'"),
    ("a,/CN=a,pass:x,,,,hex:zz", "line 2: ref: reference 'hex:zz' is not hex after 'hex:'"),
])
def test_manifest_header_columns_are_checked(row: str, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("id,subject,secret,sender,message_time,max_iterations,ref\n" + row + "\n")
    assert str(info.value.problems[0]).startswith(problem)


def test_sender_is_refused_for_a_signed_device(tmp_path: Path) -> None:
    _, cert, key = vendor_hierarchy(tmp_path)
    with pytest.raises(ManifestError) as info:
        parse_manifest(f"id,subject,cert,key,sender\nv,/CN=v,{cert},{key},/CN=x\n", base=tmp_path)
    assert str(info.value.problems[0]) == (
        "line 2: sender: only with secret (MAC): a signed request names its certificate's subject"
    )


def test_provisioned_requests_pass_a_strict_servers_checks(tmp_path: Path) -> None:
    root, cert, key = vendor_hierarchy(tmp_path)
    # gnb-2 sends no messageTime, which fleet ca serve refuses (badTime) unless told otherwise
    ca = CaProcess(tmp_path, "--vendor-trust", str(tmp_path / "vendor-root.pem"), "--no-require-message-time")
    try:
        with recording_proxy(ca.url) as proxy:
            manifest = tmp_path / "devices.csv"
            manifest.write_text(
                "id,subject,ref,secret,recipient,message_time,cert,key\n"
                f"gnb-1,/CN=gnb-1,CN=gnb-0001,pass:{secret_for('CN=gnb-0001')},,,,\n"
                f"gnb-2,/CN=gnb-2,,pass:{secret_for('gnb-2')},/CN=Operator CA,false,,\n"
                f"v1,/CN=v1,,,,,{cert},{key}\n")
            url = f"http://127.0.0.1:{proxy.port}/.well-known/cmp"
            result = run_provision(str(manifest), "--server", url, "--out", str(tmp_path / "out"),
                                   "--trusted", str(ca.root_path), "--no-progress")
            assert result.returncode == 0, result.stdout + result.stderr
            sent = [data for _, data in proxy.requests]
    finally:
        ca.stop()
    by_kid: dict[bytes, list[bytes]] = {}
    for data in sent:
        by_kid.setdefault(bytes(strict.decode(data)["header"]["senderKID"]), []).append(data)
    assert {len(v) for v in by_kid.values()} == {2}  # ir and certConf of each of the three devices
    for data in by_kid[b"CN=gnb-0001"]:
        assert strict.sender_attributes(data) == [("2.5.4.3", "gnb-0001")]  # not CN=CN=gnb-0001
        assert strict.problems(data, secret=secret_for("CN=gnb-0001").encode()) == []
    for data in by_kid[b"gnb-2"]:
        header = strict.decode(data)["header"]
        assert strict.sender_attributes(data) == [("2.5.4.3", "gnb-2")] and not header["messageTime"].isValue
        assert strict.name_attributes(header["recipient"]["directoryName"]) == [("2.5.4.3", "Operator CA")]
        assert strict.problems(data, secret=secret_for("gnb-2").encode()) == []
    [idevid_kid] = [k for k in by_kid if k not in (b"CN=gnb-0001", b"gnb-2")]
    for data in by_kid[idevid_kid]:
        assert strict.extra_cert_subjects(data) == ["CN=IDevID v1", "CN=Vendor Issuing CA"]
        assert strict.problems(data, anchors=[root]) == []
