"""Device output files: chain building, modes, PKCS#12, cert.pem last, summary and table."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from provision_helpers import name

from fleet.ca.pki import CaHierarchy, CertificateIssuer
from fleet.files import load_certificates, load_private_key
from fleet.provision import outputs


def issued(tmp_path: Path) -> tuple[CaHierarchy, bytes, ec.EllipticCurvePrivateKey]:
    hierarchy = CaHierarchy.load_or_create(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = CertificateIssuer(hierarchy, base_url="http://127.0.0.1:9").issue(key.public_key(), name("dev"))
    return hierarchy, cert.der, key


def test_split_chain_orders_the_path_and_drops_strangers(tmp_path: Path) -> None:
    hierarchy, cert_der, _ = issued(tmp_path)
    stranger = CaHierarchy.load_or_create(tmp_path / "other").root_der
    pool = [hierarchy.root_der, stranger, *reversed(hierarchy.chain_for_issued_der), cert_der]
    inter, roots = outputs.split_chain(cert_der, pool)
    assert roots == [hierarchy.root_der]
    assert inter == [c for c in hierarchy.chain_for_issued_der if c != hierarchy.root_der]
    assert outputs.split_chain(cert_der, []) == ([], [])


def test_device_files_modes_and_p12(tmp_path: Path) -> None:
    hierarchy, cert_der, key = issued(tmp_path)
    out = tmp_path / "out"
    outputs.store_key(out, "dev", key, b"pw")
    inter, roots = outputs.split_chain(cert_der, hierarchy.chain_for_issued_der)
    outputs.write_certificate(out, "dev", cert_der, inter, roots, key=key, p12_password=b"pw", p12=True)
    folder = out / "dev"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(folder / "device.p12").st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in (folder / "key.pem").read_bytes()
    assert outputs.load_key(out, "dev", b"pw").private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert outputs.load_key(out, "nobody", None) is None
    _, p12_cert, p12_cas = pkcs12.load_key_and_certificates((folder / "device.p12").read_bytes(), b"pw")
    assert p12_cert is not None and p12_cert.public_bytes(Encoding.DER) == cert_der and len(p12_cas) == len(inter) + 1
    assert [c.public_bytes(Encoding.DER) for c in load_certificates(folder / "ca.pem")] == roots
    assert sorted(os.listdir(folder)) == ["ca.pem", "cert.pem", "chain.pem", "device.p12", "key.pem"]
    assert load_private_key(folder / "key.pem", b"pw") is not None


def test_summary_and_table(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "outcome": "provisioned", "error": None} for i in range(5)]
    path = outputs.write_summary(tmp_path, {"devices": 5, "results": rows})
    assert json.loads(path.read_text())["devices"] == 5
    table = outputs.format_table(rows, ("id", "outcome", "error"), limit=3).splitlines()
    assert table[0].split() == ["id", "outcome", "error"] and table[1].split() == ["d0", "provisioned"]
    assert table[-1] == "... 2 more devices in summary.json"
