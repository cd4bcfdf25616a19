"""µs per operation: fleet's hand-written CMP codec against pyasn1-alt-modules (rfc9480).

    python bench/codec_speed.py [--repeat 7] [--seconds 0.2]

Encodes an ir (PBM-protected header, one CertReqMsg with subject, EC public key, SAN extension
and signature POP) and decodes an ip (caPubs, one certificate, extraCerts). Both
codecs work on the same bytes: the pyasn1 object is pyasn1's decoding of fleet's encoding, and the
script checks that pyasn1 re-encodes it byte for byte before timing. Medians of ``--repeat`` runs;
on a shared machine compare ratios, not absolute figures. Runs in a few seconds with the
defaults; needs the test extra (hypothesis), since it borrows the test certificates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc9480

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.cmp.strategies

from fleet.cmp import der, oids
from fleet.cmp import messages as m
from tests.cmp import strategies as S


def sample_messages() -> tuple[m.PKIMessage, bytes]:
    """An ir dataclass and an encoded ip, shaped like a real enrollment."""
    name = der.sequence(
        der.set_of(der.sequence(der.oid("2.5.4.3"), der.utf8_string("Device 0001")))
    )
    pbm = der.algorithm_identifier(
        oids.PASSWORD_BASED_MAC,
        der.sequence(
            der.octet_string(b"\x5a" * 16),
            der.algorithm_identifier(oids.SHA256),
            der.integer(500),
            der.algorithm_identifier(oids.HMAC_WITH_SHA256),
        ),
    )
    header = m.PKIHeader(
        sender=m.directory_name(name),
        recipient=m.directory_name(name),
        transaction_id=b"\x01" * 16,
        sender_nonce=b"\x02" * 16,
        sender_kid=b"1234",
        protection_alg=pbm,
        general_info=(m.InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),),
    )
    template = m.CertTemplate(subject=name, public_key=S.SPKIS[1], extensions=S.SAN_EXTENSIONS)
    popo = m.Popo("signature", der.algorithm_identifier(oids.ECDSA_SHA256), b"\x30" + b"\x44" * 70)
    ir = m.PKIMessage(
        header,
        m.BodyType.IR,
        m.CertReqMessages((m.CertReqMsg(0, template, popo),)),
        protection=b"\x03" * 32,
    )
    ip = m.PKIMessage(
        header,
        m.BodyType.IP,
        m.CertRepMessage(
            (m.CertResponse(0, m.ACCEPTED, certificate=S.CERTS[1]),), ca_pubs=S.CERTS[:1]
        ),
        protection=b"\x04" * 32,
        extra_certs=S.CERTS[:1],
    )
    return ir, m.encode(ip)


def per_op_us(fn: Callable[[], object], repeat: int, seconds: float) -> float:
    """Median µs per call over ``repeat`` runs of about ``seconds`` each."""
    number = 1
    while True:  # calibrate: double until a run takes a quarter of the target
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            break
        number *= 2
    number = max(1, int(number * seconds / elapsed))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.15, help="length of one timed run")
    args = parser.parse_args(argv)

    ir, ip_der = sample_messages()
    ir_der = m.encode(ir)
    ir_obj, rest = decoder.decode(ir_der, asn1Spec=rfc9480.PKIMessage())
    assert not rest and encoder.encode(ir_obj) == ir_der, "pyasn1 disagrees with fleet on the ir"
    ip_obj, rest = decoder.decode(ip_der, asn1Spec=rfc9480.PKIMessage())
    assert not rest and encoder.encode(ip_obj) == ip_der, "pyasn1 disagrees with fleet on the ip"

    rows = [
        (
            f"encode ir ({len(ir_der)} B)",
            per_op_us(lambda: m.encode(ir), args.repeat, args.seconds),
            per_op_us(lambda: encoder.encode(ir_obj), args.repeat, args.seconds),
        ),
        (
            f"decode ip ({len(ip_der)} B)",
            per_op_us(lambda: m.decode(ip_der), args.repeat, args.seconds),
            per_op_us(
                lambda: decoder.decode(ip_der, asn1Spec=rfc9480.PKIMessage()),
                args.repeat,
                args.seconds,
            ),
        ),
    ]
    print(f"{'operation':<22} {'fleet µs':>10} {'pyasn1 µs':>10} {'ratio':>8}")
    for label, fast, slow in rows:
        print(f"{label:<22} {fast:>10.1f} {slow:>10.1f} {slow / fast:>7.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
