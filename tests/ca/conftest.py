"""Shared CA fixtures: one EC P-256 hierarchy per module (creating one costs ~10 ms)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.ca.pki import CaHierarchy, CertificateIssuer

BASE_URL = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def hierarchy(tmp_path_factory: pytest.TempPathFactory) -> CaHierarchy:
    return CaHierarchy.load_or_create(tmp_path_factory.mktemp("ca") / "state")


@pytest.fixture(scope="module")
def issuer(hierarchy: CaHierarchy) -> CertificateIssuer:
    return CertificateIssuer(hierarchy, base_url=BASE_URL)


def device_name(cn: str = "device-1") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ec_public_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the openssl CLI (bounded in time), returning its completed process."""
    return subprocess.run(
        ["openssl", *map(str, args)], check=False, capture_output=True, text=True, timeout=30, cwd=cwd
    )


def openssl_verify(
    hierarchy: CaHierarchy, cert: x509.Certificate, tmp: Path
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -CAfile root -untrusted <issuing and above> cert.pem`."""
    root = write_pem(tmp / "root.pem", hierarchy.root)
    untrusted = tmp / "untrusted.pem"
    untrusted.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in hierarchy.chain_for_issued)
    )
    leaf = write_pem(tmp / "leaf.pem", cert)
    return openssl("verify", "-CAfile", root, "-untrusted", untrusted, leaf)
