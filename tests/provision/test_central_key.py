"""``fleet provision`` with a ``central_key`` column: the CA (``fleet ca serve --kga``) generates
those devices' keys; each is written 0600 as key.pem before the journal records the certificate,
and the journal never holds it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from provision_helpers import CaProcess, run_provision, secret_for


def _manifest(path: Path) -> None:
    rows = ["id,subject,secret,central_key,key_type"]
    rows += [f"c{i},/CN=c{i},pass:{secret_for(f'c{i}')},ec:P-256," for i in range(3)]
    rows.append(f"r0,/CN=r0,pass:{secret_for('r0')},rsa:2048,")
    rows.append(f"l0,/CN=l0,pass:{secret_for('l0')},,ec:P-384")
    path.write_text("\n".join(rows) + "\n")


def _spki(obj) -> bytes:  # type: ignore[no-untyped-def]
    return obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_central_keys_are_provisioned_and_never_journaled(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path, "--kga")
    try:
        manifest, out = tmp_path / "m.csv", tmp_path / "out"
        _manifest(manifest)
        dry = run_provision(str(manifest), "--dry-run")
        assert dry.returncode == 0 and "5 devices OK" in dry.stdout, dry.stdout + dry.stderr
        result = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress")
        assert result.returncode == 0, result.stderr
    finally:
        ca.stop()
    journal = (out / "journal.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in out.glob("journal.sqlite-*"))
    for device, kind in (("c0", "ec:P-256"), ("c1", "ec:P-256"), ("c2", "ec:P-256"), ("r0", "rsa:2048"), ("l0", "")):
        key_path = out / device / "key.pem"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate((out / device / "cert.pem").read_bytes())
        assert _spki(key) == _spki(cert)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        numbers = key.private_numbers()  # type: ignore[union-attr]
        secret = numbers.private_value if hasattr(numbers, "private_value") else numbers.p
        scalar = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
        assert der not in journal and scalar not in journal and key_path.read_bytes()[40:90] not in journal
        if kind == "rsa:2048":
            assert key.key_size == 2048  # type: ignore[union-attr]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["provisioned"] == 5
    store = ca.store()
    try:
        rows = {store.central_key(int(r["serial"], 16)) for r in summary["results"]}
    finally:
        store.close()
    assert rows == {("ec:P-256", "pwri"), ("rsa:2048", "pwri"), None}


def test_a_ca_without_kga_fails_those_devices_alone(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path)
    try:
        manifest, out = tmp_path / "m.csv", tmp_path / "out"
        _manifest(manifest)
        result = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress",
                               "--max-attempts", "1")
        assert result.returncode != 0 and "Traceback" not in result.stderr
    finally:
        ca.stop()
    summary = json.loads((out / "summary.json").read_text())
    outcomes = {r["id"]: (r["outcome"], r["fail_info"]) for r in summary["results"]}
    assert outcomes["l0"] == ("provisioned", None)
    for device in ("c0", "c1", "c2", "r0"):
        assert outcomes[device][0] == "failed" and "badCertTemplate" in (outcomes[device][1] or "")
        assert not (out / device / "key.pem").exists() and not (out / device / "cert.pem").exists()


def test_manifest_mistakes_name_the_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,subject,secret,central_key,key_type\n"
                        "a,/CN=a,pass:x,ec:P-256,ec:P-256\nb,/CN=b,pass:x,ed448,\n")
    result = run_provision(str(manifest), "--dry-run")
    assert result.returncode == 1
    assert "line 2: key_type: not with central_key: the CA generates the key" in result.stderr
    assert "line 3: central_key: central key generation of ed448 is not supported" in result.stderr


def test_central_keys_cannot_go_to_a_pkcs11_token(tmp_path: Path) -> None:
    """The CA delivers a central key as a file: with --pkcs11-module it is refused, before anything
    is sent or any token opened (no module needed)."""
    manifest = tmp_path / "m.csv"
    _manifest(manifest)
    result = run_provision(str(manifest), "--server", "http://127.0.0.1:1/.well-known/cmp", "--out",
                           str(tmp_path / "out"), "--pkcs11-module", "/nonexistent/libsofthsm2.so",
                           "--pkcs11-token", "t", "--pkcs11-pin", "pass:1234")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "central_key (device c0)" in lines[0] and "--pkcs11-module" in lines[0], lines
    assert not (tmp_path / "out").exists()
