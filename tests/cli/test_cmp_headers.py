"""``fleet cmp`` against a real ``fleet ca serve`` through a recording proxy: the header fields
the user can set arrive as set, and the defaults are what a strict RFC 9483 server expects
(``strict_lwcmp`` decodes the bytes with pyasn1-alt-modules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import strict_lwcmp as strict
from cli_helpers import device_secret, fleet, running_ca
from cryptography import x509
from pyasn1.codec.der import decoder
from pyasn1_alt_modules import rfc9480
from recording_proxy import recording_proxy

REF = "CN=fleet-test"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """The README's CA behind a recording proxy: (URL to give fleet, the requests it recorded).
    It takes requests without messageTime, which --no-message-time sends (a strict CA refuses them:
    ``test_a_strict_ca_refuses_no_message_time``)."""
    with running_ca(tmp_path_factory.mktemp("ca") / "state", "--no-require-message-time") as server, recording_proxy(server.url) as proxy:
        yield f"http://127.0.0.1:{proxy.port}/.well-known/cmp", proxy.requests


def cmp(*args: str, cwd: Path) -> str:
    result = fleet("cmp", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def sent_since(requests: list[tuple[str, bytes]], mark: int) -> list[bytes]:
    return [data for _, data in requests[mark:]]


@pytest.fixture
def enrolled(ca: tuple[str, list[tuple[str, bytes]]], tmp_path: Path) -> Path:
    """A device enrolled with MAC: device.pem/key, chain.pem (the issuing CA), root.pem."""
    url, _ = ca
    folder = tmp_path
    cmp("ir", "--server", url, "--ref", REF, "--secret", f"pass:{device_secret(REF)}", "--subject", "/CN=device-7",
        "--newkey", "device.key", "--certout", "device.pem", "--chainout", "chain.pem", "--cacertsout", "root.pem",
        cwd=folder)
    return folder


def test_header_fields_set_from_the_command_line(ca: tuple[str, list[tuple[str, bytes]]], tmp_path: Path) -> None:
    url, requests = ca
    mark = len(requests)
    cmp("genm", "--server", url, "--ref", REF, "--secret", f"pass:{device_secret(REF)}", "--sender", "/CN=ops/O=Operator",
        "--recipient", "/CN=Issuing CA", "--no-message-time", "--cert-profile", "base-station", cwd=tmp_path)
    [data] = sent_since(requests, mark)
    header = strict.decode(data)["header"]
    assert strict.sender_attributes(data) == [("2.5.4.3", "ops"), ("2.5.4.10", "Operator")]
    assert strict.name_attributes(header["recipient"]["directoryName"]) == [("2.5.4.3", "Issuing CA")]
    assert not header["messageTime"].isValue
    [info] = list(header["generalInfo"])
    assert str(info["infoType"]) == "1.3.6.1.5.5.7.4.21"  # id-it-certProfile
    profiles, _ = decoder.decode(bytes(info["infoValue"]), asn1Spec=rfc9480.CertProfileValue())
    assert [str(p) for p in profiles] == ["base-station"]
    # An explicit sender is the user's choice: a strict server would see it does not name the senderKID.
    assert strict.problems(data, secret=device_secret(REF).encode()) == [
        "MAC protection: sender does not name the senderKID's entity"
    ]


def test_defaults_a_strict_server_accepts(ca: tuple[str, list[tuple[str, bytes]]], enrolled: Path) -> None:
    """MAC genm: sender CN=fleet-test for --ref CN=fleet-test (not CN=CN=fleet-test), messageTime
    present; kur signed with a certificate from the issuing CA, its chain taken from the --cert
    file itself; rr without --revreason: one CRLReason, unspecified."""
    url, requests = ca
    root = x509.load_pem_x509_certificate((enrolled / "root.pem").read_bytes())
    mark = len(requests)
    cmp("genm", "--server", url, "--ref", REF, "--secret", f"pass:{device_secret(REF)}", cwd=enrolled)
    (enrolled / "device-with-chain.pem").write_bytes((enrolled / "device.pem").read_bytes() + (enrolled / "chain.pem").read_bytes())
    cmp("kur", "--server", url, "--cert", "device-with-chain.pem", "--key", "device.key", "--trusted", "root.pem",
        "--newkey", "new.key", "--certout", "new.pem", cwd=enrolled)
    cmp("rr", "--server", url, "--cert", "new.pem", "--key", "new.key", "--untrusted", "chain.pem",
        "--trusted", "root.pem", "--oldcert", "new.pem", cwd=enrolled)
    genm, kur, conf, rr = sent_since(requests, mark)
    assert strict.sender_attributes(genm) == [("2.5.4.3", "fleet-test")]
    assert strict.decode(genm)["header"]["messageTime"].isValue
    issuing = x509.load_pem_x509_certificates((enrolled / "chain.pem").read_bytes())[0].subject.rfc4514_string()
    assert strict.extra_cert_subjects(kur) == ["CN=device-7", issuing]
    assert strict.extra_cert_subjects(rr) == ["CN=device-7", issuing]
    assert strict.crl_reasons(rr) == [0]
    for data in (genm, kur, conf, rr):
        assert strict.problems(data, anchors=[root], secret=device_secret(REF).encode()) == []


def test_without_the_chain_a_strict_server_would_refuse(ca: tuple[str, list[tuple[str, bytes]]], enrolled: Path) -> None:
    """The check is not vacuous: with only --trusted (a self-signed root, never sent) fleet has
    no intermediate to send; fleet's own CA accepts it (it knows its issuing CA), a strict one
    would not."""
    url, requests = ca
    root = x509.load_pem_x509_certificate((enrolled / "root.pem").read_bytes())
    mark = len(requests)
    cmp("cr", "--server", url, "--cert", "device.pem", "--key", "device.key", "--trusted", "root.pem",
        "--subject", "/CN=device-7b", "--newkey", "second.key", cwd=enrolled)
    cr = sent_since(requests, mark)[0]
    assert strict.extra_cert_subjects(cr) == ["CN=device-7"]
    assert strict.problems(cr, anchors=[root]) == ["the certificate chain was not present: no issuer of 'CN=device-7'"]


def test_a_strict_ca_refuses_no_message_time(tmp_path: Path) -> None:
    """``fleet ca serve`` by default refuses a request without messageTime (RFC 9483 §3.1,
    badTime): the client says so in one line; the same request with messageTime is served."""
    with running_ca(tmp_path / "state") as server:
        url = server.url
        mac = ("--ref", REF, "--secret", f"pass:{device_secret(REF)}")
        refused = fleet("cmp", "genm", "--server", url, *mac, "--no-message-time", cwd=tmp_path)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert "badTime" in line and "messageTime" in line, line
        cmp("genm", "--server", url, *mac, cwd=tmp_path)


def test_pss_signs_pop_and_protection_with_rsa_key_files(ca: tuple[str, list[tuple[str, bytes]]], tmp_path: Path) -> None:
    """--pss: the POP of an RSA --newkey (ir, kur) and the protection by an RSA --key (kur) are
    RSASSA-PSS, as read by pyasn1 from the bytes sent; the CA verifies and accepts them."""
    url, requests = ca
    mark = len(requests)
    cmp("ir", "--server", url, "--ref", REF, "--secret", f"pass:{device_secret(REF)}", "--subject", "/CN=rsa-pss",
        "--newkey", "rsa.key", "--newkey-type", "rsa:2048", "--pss", "--certout", "rsa.pem", "--chainout", "chain.pem",
        "--cacertsout", "root.pem", cwd=tmp_path)
    cmp("kur", "--server", url, "--cert", "rsa.pem", "--key", "rsa.key", "--trusted", "root.pem", "--untrusted",
        "chain.pem", "--newkey", "rsa2.key", "--newkey-type", "rsa:2048", "--pss", "--certout", "rsa2.pem", cwd=tmp_path)
    sent = {str(strict.decode(d)["body"].getName()): strict.decode(d) for d in sent_since(requests, mark)}
    pss = "1.2.840.113549.1.1.10"  # id-RSASSA-PSS
    for kind in ("ir", "kur"):
        popo = sent[kind]["body"][kind][0]["popo"]["signature"]
        assert str(popo["algorithmIdentifier"]["algorithm"]) == pss
    assert str(sent["ir"]["header"]["protectionAlg"]["algorithm"]) != pss  # MAC-protected
    assert str(sent["kur"]["header"]["protectionAlg"]["algorithm"]) == pss
