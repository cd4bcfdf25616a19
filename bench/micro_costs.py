"""µs per call of the small choices fleet's CMP core makes for speed (see bench/README.md).

    python bench/micro_costs.py

Each line sets the choice against what it replaces: the C extensions against their Python
references, fastwire's twins against the reference codec, cached or direct calls against the
general ones. Best of five runs; on a shared machine compare ratios, not absolute figures.
Needs the test extra (hypothesis), since it borrows the test certificates.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.cmp.strategies

from fleet.cmp import _accel, der, fastwire, iterated_hash
from fleet.cmp import messages as m
from fleet.cmp.messages import decoding, encoding
from fleet.cmp.protection import MacProtector, hmac_digest
from tests.cmp import strategies as S


def us(func: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=5)) / number * 1e6


def line(what: str, fast: float, slow: float, slow_name: str) -> None:
    print(f"{what:44s} {fast:8.2f} µs   {slow_name:28s} {slow:8.2f} µs   ({slow / fast:4.1f}x)")


def main() -> None:
    print("accelerators:", _accel.implementation())
    rounds = iterated_hash._ACCELERATED.get("sha256") or (
        lambda d, n: iterated_hash.iterated_digest("sha256", d, n)
    )
    line(
        "PBM base key, 500 rounds SHA-256 (C)",
        us(lambda: rounds(b"secret-salt", 500), 500),
        us(lambda: iterated_hash.python_iterated_digest("sha256", b"secret-salt", 500), 100),
        "Python loop",
    )
    cert = S.CERTS[1]
    line(
        "der.read_tlv",
        us(lambda: der.read_tlv(cert, 0, len(cert)), 100_000),
        us(lambda: der.python_read_tlv(cert, 0, len(cert)), 100_000),
        "its Python reference",
    )
    line(
        "der.tlv",
        us(lambda: der.tlv(0x30, b"x" * 40), 100_000),
        us(lambda: der.python_tlv(0x30, b"x" * 40), 100_000),
        "its Python reference",
    )
    key = b"k" * 32
    line(
        "HMAC from precomputed pads",
        us(lambda: hmac_digest(key, b"x" * 300, "sha256"), 20_000),
        us(lambda: hmac.digest(key, b"x" * 300, "sha256"), 20_000),
        "hmac.digest",
    )
    line(
        "hashlib.sha256(...)",
        us(lambda: hashlib.sha256(b"x" * 600).digest(), 50_000),
        us(lambda: hashlib.new("sha256", b"x" * 600).digest(), 50_000),
        "hashlib.new('sha256', ...)",
    )
    stamp = b"20260102030405Z"
    line(
        "der.time_value (uncached)",
        us(lambda: der.time_value.__wrapped__(der.GENERALIZED_TIME, stamp), 20_000),
        us(lambda: datetime.strptime(stamp.decode(), "%Y%m%d%H%M%SZ"), 20_000),
        "datetime.strptime",
    )
    line(
        "fastwire.message_time_der (same second)",
        us(lambda: fastwire.message_time_der(1.7e9), 100_000),
        us(lambda: encoding.message_time_der(1.7e9), 20_000),
        "encoding.message_time_der",
    )
    template = MacProtector(b"secret", reference=b"ref", salt=b"0" * 16)
    line(
        "MacProtector.with_secret",
        us(lambda: template.with_secret(b"other", b"dev"), 50_000),
        us(lambda: MacProtector(b"other", reference=b"dev", salt=b"0" * 16), 20_000),
        "MacProtector(...)",
    )
    line(
        "x509 load of an issued certificate",
        us(lambda: x509.load_der_x509_certificate(cert), 20_000),
        us(lambda: _load_all(cert), 5_000),
        "... and names, extensions",
    )
    k = ec.generate_private_key(ec.SECP256R1())
    print(
        f"{'isinstance against a cryptography key ABC':44s} {us(lambda: isinstance(k, ec.EllipticCurvePrivateKey), 100_000):8.2f} µs"
    )
    header = m.PKIHeader(
        sender=m.NULL_DN_GENERAL_NAME,
        recipient=m.NULL_DN_GENERAL_NAME,
        transaction_id=b"t" * 16,
        sender_nonce=b"n" * 16,
        recip_nonce=b"r" * 16,
        sender_kid=b"ref",
        message_time=datetime(2026, 1, 1, tzinfo=UTC),
        protection_alg=template.algorithm,
    )
    body = m.CertRepMessage((m.CertResponse(0, m.ACCEPTED, cert),), (S.CERTS[0],))
    ip = m.encode(m.PKIMessage(header, m.BodyType.IP, body, b"p" * 32, (S.CERTS[0],)))
    line(
        "decode an ip (fastwire)",
        us(lambda: fastwire.decode(ip), 10_000),
        us(lambda: decoding.decode(ip), 10_000),
        "reference decoding.decode",
    )
    writer = fastwire.HeaderWriter(
        header.sender, header.recipient, header.protection_alg, b"ref", b"t" * 16
    )
    line(
        "encode a client header (HeaderWriter)",
        us(lambda: writer.header(b"n" * 16, message_time=1.7e9, recip_nonce=b"r" * 16), 20_000),
        us(lambda: encoding.encode_header(header), 20_000),
        "encoding.encode_header",
    )


def _load_all(cert: bytes) -> object:
    c = x509.load_der_x509_certificate(cert)
    return c.version, c.subject, c.issuer, c.extensions


if __name__ == "__main__":
    main()
