"""The embedded CA as a key generation authority (RFC 9483 §4.1.6).

The KGA signs the key packages it delivers with a certificate of its own, issued by the
issuing CA with the id-kp-cmKGA extended key usage (RFC 9810 §5.2.2 / RFC 9480) and kept in
the state directory beside the hierarchy (``kga.pem``, ``kga.key.pem``, created on the first
start that needs it). Which paths serve central key generation: every one (``CaConfig.kga``,
``fleet ca serve --kga``), or only ``/p/<name>`` for the profiles in ``kga_profiles``.

RSA keys cost tens of milliseconds each; ``kga_rsa_pool`` > 0 takes that many from fleet's
pre-generated RSA pool (``fleet keys generate``) and hands them out in turn, reusing them once
all are served: a load-target knob that makes RSA central generation testable at rate, never
for keys anybody keeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fleet.ca.hierarchy import (
    BACKDATE,
    DIGITAL_SIGNATURE,
    CaHierarchy,
    HierarchyError,
    signature_hash_for,
)
from fleet.cmp.cms import DEFAULT_KEK_CACHE_ENTRIES
from fleet.cmp.keypackage import ID_KP_CM_KGA
from fleet.cmp.kga import CentralKeyGenerator
from fleet.files import atomic_write
from fleet.keys import KeyPool, KeyPoolError, KeyPoolStore
from fleet.keytypes import KeySpec

__all__ = ["KGA_CERT", "KGA_KEY", "build_kga", "kga_profiles", "load_or_create_kga_cert"]

KGA_CERT = "kga.pem"
KGA_KEY = "kga.key.pem"


def kga_profiles(everywhere: bool, profiles: str) -> tuple[str, ...]:
    """``CaConfig.kga`` and ``kga_profiles`` as the paths that serve central key generation:
    ("*",) for every path, else the ``/p/<name>`` profile names (none: off)."""
    return ("*",) if everywhere else tuple(n.strip() for n in profiles.split(",") if n.strip())


def load_or_create_kga_cert(state: Path, hierarchy: CaHierarchy) -> tuple[object, x509.Certificate]:
    """The KGA's key and certificate from ``state``, issued by the issuing CA at first need."""
    cert_path, key_path = state / KGA_CERT, state / KGA_KEY
    if cert_path.exists():
        if not key_path.exists():
            raise HierarchyError(f"{cert_path} exists but its key {key_path.name} is missing")
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return key, cert
    issuer = hierarchy.issuing
    key = KeySpec.of(hierarchy.signer_key.public_key()).generate()  # type: ignore[arg-type]
    now = datetime.now(UTC).replace(microsecond=0)
    org = issuer.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    name = x509.Name([*(org[:1]), x509.NameAttribute(x509.NameOID.COMMON_NAME, "fleet KGA")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(issuer.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(DIGITAL_SIGNATURE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(ID_KP_CM_KGA)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(hierarchy.issuing_key, signature_hash_for(hierarchy.issuing_key))  # type: ignore[arg-type]
    )
    # Key first, certificate last: a crash leaves a key nobody certified, replaced next time.
    atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return key, cert


def _rsa_pool(count: int, bits: int) -> KeyPool | None:
    if count <= 0:
        return None
    spec = KeySpec("rsa", bits=bits)
    store = KeyPoolStore()
    available = store.count(spec)
    if available < count:
        raise KeyPoolError(
            f"kga_rsa_pool needs {count} {spec} keys, the pool in {store.directory} holds {available}; "
            f"run `fleet keys generate --type {spec} --count {count - available}`"
        )
    # The pool's last keys: devices of a run take theirs from the start.
    return store.load(spec, count, start=available - count, on_exhausted="reuse")


def build_kga(
    state: Path, hierarchy: CaHierarchy, *, key_type: str = "ec:P-256", password_delivery: bool = True,
    pwri_iterations: int = 2048, rsa_pool: int = 0, kek_cache: int = DEFAULT_KEK_CACHE_ENTRIES,
) -> CentralKeyGenerator:
    """The CA's KGA: its certificate (``load_or_create_kga_cert``) and generation policy."""
    key, cert = load_or_create_kga_cert(state, hierarchy)
    default = KeySpec.parse(key_type)
    bits = default.bits if default.algorithm == "rsa" and default.bits else 2048
    pool = _rsa_pool(rsa_pool, bits)

    def from_pool(wanted: int) -> rsa.RSAPrivateKey:
        if pool is None or wanted != bits:
            return KeySpec("rsa", bits=wanted).generate()  # type: ignore[return-value]
        return pool.take()  # type: ignore[return-value]

    chain = tuple(c for c in hierarchy.chain_for_issued_der if c != hierarchy.root_der)
    return CentralKeyGenerator(
        key, cert, chain, default=str(default), rsa_bits=bits, rsa_pool=from_pool,  # type: ignore[arg-type]
        password_delivery=password_delivery, pwri_iterations=pwri_iterations, kek_cache=kek_cache,
    )
