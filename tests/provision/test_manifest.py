"""Manifest parsing: CSV and JSON Lines, every problem named by line and field, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest
from provision_helpers import VendorPki, make_csr

from fleet.provision.manifest import CertAuth, MacAuth, ManifestError, load_manifest, parse_manifest


def problems(text: str, kind: str = "csv", base: Path = Path(".")) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, kind=kind, base=base)
    return [str(p) for p in info.value.problems]


def test_csv_rows_with_mac_auth_defaults() -> None:
    devices = parse_manifest(
        "# comment\nid,subject,sans,secret,ref,key_type,profile\n"
        "a,/CN=a,\"DNS:a.example, IP:10.0.0.1\",pass:s3cret,,,\n"
        "\n"
        "b,CN=b,,pass:x,ref-b,ec:P-384,tls\n"
    )
    a, b = devices
    assert (a.id, a.line, b.line) == ("a", 3, 5)
    assert isinstance(a.auth, MacAuth) and a.auth.reference == "a" and b.auth.reference == "ref-b"
    assert len(a.sans) == 2 and str(a.key_type) == "ec:P-256" and str(b.key_type) == "ec:P-384"
    assert b.profile == "tls" and a.operation == "ir" and a.auth_kind == "mac"
    assert "s3cret" not in repr(a) and a.fingerprint != b.fingerprint


def test_jsonl_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "j1", "subject": "/CN=j1", "sans": ["DNS:j1.example"], "secret": "env:PV_SECRET"}\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PV_SECRET", "from-env")
        (device,) = load_manifest(path)
    assert isinstance(device.auth, MacAuth) and device.auth.secret == b"from-env"


def test_every_problem_has_line_field_and_reason() -> None:
    text = (
        "id,subject,sans,secret,key_type,path,profile\n"
        "ok,/CN=ok,,pass:x,,,\n"
        "ok,/CN=dup,,pass:x,,,\n"
        "../evil,/CN=e,,pass:x,,,\n"
        "n1,/XX=1,,pass:x,,,\n"
        "n2,/CN=n2,IP:999.1.1.1,pass:x,,,\n"
        "n3,/CN=n3,,,,,\n"
        "n4,/CN=n4,,env:PV_SURELY_UNSET_VAR,,,\n"
        "n5,/CN=n5,,pass:x,dsa:1024,,\n"
        "n6,/CN=n6,,pass:x,,relative,\n"
        "n7,/CN=n7,,pass:x,,,bad/profile\n"
        "n8,,,pass:x,,,\n"
    )
    found = problems(text)
    assert found[0] == "line 3: id: duplicate id 'ok' (first on line 2)"
    assert found[1].startswith("line 4: id: '../evil' must be")
    assert found[2].startswith("line 5: subject: ")
    assert found[3].startswith("line 6: sans: ")
    assert found[4].startswith("line 7: secret: no authentication")
    assert found[5] == "line 8: secret: environment variable 'PV_SURELY_UNSET_VAR' for the secret is not set"
    assert found[6].startswith("line 9: key_type: ")
    assert found[7].startswith("line 10: path: ")
    assert found[8].startswith("line 11: profile: ")
    assert found[9] == "line 12: subject: give subject and/or sans"
    assert len(found) == 10


def test_header_and_syntax_problems() -> None:
    assert problems("id,colour\na,red\n") == [
        (
            "line 1: header: unknown column 'colour' (known: id, subject, sans, ref, secret, cert, key, "
            "key_pass, chain, key_type, central_key, csr, csr_key, profile, path, cert_profile, sender, recipient, message_time, "
            "max_iterations)"
        )
    ]
    assert problems("id,subject,secret\na,/CN=a,pass:x,extra\n")[0].startswith("line 2: row: 4 cells")
    assert problems('{"id": "a"\n', kind="jsonl")[0].startswith("line 1: row: JSON syntax")
    assert problems("id,subject,secret\n") == ["line 0: file: no devices"]
    with pytest.raises(ManifestError, match=r"manifest .*missing.csv: line 0: file: No such file"):
        load_manifest(Path("/nonexistent/missing.csv"))


def test_idevid_and_csr_rows(tmp_path: Path) -> None:
    vendor = VendorPki(tmp_path)
    cert, key = vendor.idevid("v1")
    other_cert, _ = vendor.idevid("v2")
    csr, csr_key = make_csr(tmp_path, "c1", keep_key=True)
    _, wrong_key = make_csr(tmp_path, "c2", keep_key=True)
    text = (
        "id,subject,cert,key,secret,csr,csr_key,key_type\n"
        f"v1,/CN=v1,{cert.name},{key.name},,,,\n"
        f"c1,,,,pass:x,{csr.name},{csr_key.name},\n"
    )
    v1, c1 = parse_manifest(text, base=tmp_path)
    assert isinstance(v1.auth, CertAuth) and v1.auth_kind == "idevid"
    assert c1.operation == "p10cr" and c1.key_type is None and c1.csr_key is not None
    assert "PRIVATE" not in repr(v1) and "key=" not in repr(v1.auth)
    bad = (
        "id,subject,cert,key,secret,csr,csr_key,key_type\n"
        f"v2,/CN=v2,{other_cert.name},{key.name},,,,\n"
        f"c2,,,,pass:x,{csr.name},{wrong_key.name},\n"
        f"c3,,,,pass:x,{csr.name},,ec:P-256\n"
        f"v3,/CN=v3,{cert.name},,,,,\n"
        f"v4,/CN=v4,{cert.name},{key.name},pass:x,,,\n"
        f"c4,,,,pass:x,missing.csr,,\n"
    )
    assert problems(bad, base=tmp_path) == [
        "line 2: key: does not match the public key of cert",
        "line 3: csr_key: is not the key of the CSR",
        "line 4: key_type: not with csr: the device keeps the key of its CSR",
        "line 5: key: signature authentication needs both cert and key",
        "line 6: secret: give secret (MAC) or cert and key (IDevID), not both",
        f"line 7: csr: cannot read CSR file '{tmp_path / 'missing.csr'}': No such file or directory",
    ]


def test_san_typos_and_bad_values_are_problems_with_line_and_field() -> None:
    """The manifest uses the one SAN parser: a typo is a problem, never a URI in a certificate."""
    found = problems(
        "id,subject,sans,secret\n"
        "a,/CN=a,DNS:a.example,pass:x\n"
        "b,/CN=b,DSN:b.example,pass:x\n"
        'c,/CN=c,"DNS:c.example, RID:1.2.3, FOO:bar",pass:x\n'
        "d,/CN=d,URI:no-scheme,pass:x\n"
    )
    assert len(found) == 3
    assert found[0].startswith("line 3: sans: subjectAltName 'DSN:b.example': unknown type 'DSN'; did you mean DNS:?")
    assert "allowed: DNS:, IP:, URI:, email:, RID:" in found[0]
    assert found[1].startswith("line 4: sans: subjectAltName 'FOO:bar': unknown type 'FOO'")
    assert found[2] == ("line 5: sans: bad subjectAltName 'URI:no-scheme': a URI needs a scheme, "
                        "e.g. URI:urn:uuid:... or URI:https://host/")
