"""`fleet cmp ir|cr|kur --centralkeygen --newkeyout` against a real `fleet ca serve --kga`
(subprocesses): the delivered key is written 0600 and matches the certificate; a check that
fails leaves no key file; the refusals and the usage errors are one line."""

from __future__ import annotations

import sqlite3
import stat
import sys
from pathlib import Path

import pytest
from cli_helpers import Ca, device_secret, fleet, one_error_line, running_ca
from cryptography import x509
from cryptography.hazmat.primitives import serialization

REF = "dev-00000001"


def _mac(ca: Ca, path: str = "") -> list[str]:
    return ["--server", ca.url + path, "--ref", REF, "--secret", f"pass:{device_secret(REF)}"]


def _spki_of_key(path: Path, password: bytes | None = None) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _spki_of_cert(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_central_keygen_session(tmp_path: Path) -> None:
    """The README's session: MAC ir (PWRI), then kur signed with that key (KARI), each key
    written 0600 and matching its certificate; the CA records both as centrally generated."""
    with running_ca(tmp_path / "state", "--kga") as ca:
        assert (tmp_path / "state" / "kga.pem").exists()
        key, cert, root = tmp_path / "device.key", tmp_path / "device.pem", tmp_path / "root.pem"
        r = fleet("cmp", "ir", *_mac(ca), "--subject", "/CN=kga-device", "--centralkeygen",
                  "--newkey-type", "ec:P-384", "--newkeyout", str(key), "--certout", str(cert),
                  "--chainout", str(tmp_path / "chain.pem"), "--cacertsout", str(root))
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert _spki_of_key(key) == _spki_of_cert(cert)
        assert b"BEGIN PRIVATE KEY" in key.read_bytes() and "PRIVATE" not in r.stdout + r.stderr
        new_key, new_cert = tmp_path / "new.key", tmp_path / "new.pem"
        r = fleet("cmp", "kur", "--server", ca.url, "--cert", str(cert), "--key", str(key), "--trusted", str(root),
                  "--untrusted", str(tmp_path / "chain.pem"), "--centralkeygen", "--newkeyout", str(new_key),
                  "--newkeypass", "pass:wrap-it", "--certout", str(new_cert))
        assert r.returncode == 0, r.stderr
        assert _spki_of_key(new_key, b"wrap-it") == _spki_of_cert(new_cert)
        assert stat.S_IMODE(new_key.stat().st_mode) == 0o600
    db = sqlite3.connect(tmp_path / "state" / "certs.sqlite")
    rows = sorted(db.execute("SELECT key_type, delivery FROM central_keys"))
    db.close()
    assert rows == [("ec:P-256", "kari"), ("ec:P-384", "pwri")]


def test_failed_check_leaves_no_key(tmp_path: Path) -> None:
    """A MAC cr gets no caPubs: without --trusted the KGA's signature cannot be checked. The
    certificate is refused (certConf), one line says why, and no key file appears."""
    with running_ca(tmp_path / "state", "--kga") as ca:
        key = tmp_path / "k.pem"
        r = fleet("cmp", "cr", *_mac(ca), "--subject", "/CN=x", "--centralkeygen", "--newkeyout", str(key),
                  "--certout", str(tmp_path / "c.pem"))
        assert r.returncode == 1
        line = one_error_line(r.stderr)
        assert "KGA certificate does not chain to the trust anchors" in line
        assert not key.exists() and not (tmp_path / "c.pem").exists()


def test_per_profile_kga_and_refusals(tmp_path: Path) -> None:
    with running_ca(tmp_path / "state", "--kga-profiles", "iot", "--no-kga-password-delivery") as ca:
        key = tmp_path / "k.pem"
        r = fleet("cmp", "ir", *_mac(ca), "--subject", "/CN=x", "--centralkeygen", "--newkeyout", str(key))
        assert r.returncode == 1 and "badCertTemplate" in one_error_line(r.stderr)
        assert "central key generation is off" in r.stderr
        r = fleet("cmp", "ir", *_mac(ca, "/p/iot"), "--subject", "/CN=x", "--centralkeygen", "--newkeyout", str(key))
        assert r.returncode == 1 and "notAuthorized" in one_error_line(r.stderr)
        assert not key.exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--centralkeygen"], "'--centralkeygen': needs --newkeyout"),
        (["--newkeyout", "k.pem"], "'--newkeyout': goes with --centralkeygen"),
        (["--centralkeygen", "--newkeyout", "k.pem", "--newkey", "n.pem"], "exclude each other"),
        (["--centralkeygen", "--newkeyout", "k.pem", "--newkey-type", "ed448"], "ed448 is not supported"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], words: str) -> None:
    r = fleet("cmp", "ir", "--server", "http://127.0.0.1:1/.well-known/cmp", "--ref", REF, "--secret", "pass:x",
              "--subject", "/CN=x", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert words in one_error_line(r.stderr, "fleet: usage error: ")
    assert list(tmp_path.iterdir()) == []


def test_centralkeygen_with_a_pkcs11_token_is_refused(tmp_path: Path) -> None:
    """The delivered key is written to a file: a token's key cannot come from the KGA (refused
    before any module is loaded or anything sent)."""
    r = fleet("cmp", "ir", "--server", "http://127.0.0.1:1/.well-known/cmp", "--ref", REF, "--secret", "pass:x",
              "--subject", "/CN=x", "--centralkeygen", "--newkeyout", "k.pem", "--pkcs11-module",
              "/nonexistent/libsofthsm2.so", "--pkcs11-token", "t", "--pkcs11-pin", "pass:1234", cwd=tmp_path)
    assert r.returncode == 1
    assert "cannot go with --pkcs11-module" in one_error_line(r.stderr, "fleet: error: ")
    assert list(tmp_path.iterdir()) == []


def test_readme_kga_session(tmp_path: Path) -> None:
    """The README's central key generation session, as written (only the port rewritten)."""
    from test_readme import block_with, run_block

    (tmp_path / "profiles").symlink_to(Path(__file__).resolve().parents[2] / "profiles")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "fleet"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fleet.cli.main "$@"\n')
    wrapper.chmod(0o755)
    result = run_block(block_with("--centralkeygen"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "key matches" in result.stdout
    for key in ("iot.key", "iot-new.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    assert (tmp_path / "kga-state" / "kga.pem").exists()
