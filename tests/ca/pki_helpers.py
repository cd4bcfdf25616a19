"""Helpers shared by the tests of the CA's X.509 modules (hierarchy, issuance, tbs, rfc4514)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from fleet.ca.issuance import CertificateIssuer

from .conftest import openssl

#: Subject keys of several types, made once (the Hypothesis tests draw from them).
SUBJECT_KEYS = [
    ec.generate_private_key(ec.SECP256R1()).public_key(),
    ec.generate_private_key(ec.SECP384R1()).public_key(),
    ed25519.Ed25519PrivateKey.generate().public_key(),
]


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def both_ways(
    issuer: CertificateIssuer, key: object, subject: x509.Name | None, **kwargs: object
) -> tuple[x509.Certificate, x509.Certificate]:
    """The same request, at the same time, through the direct encoding and through
    cryptography's builder; returns (direct, builder)."""
    encoder = issuer._encoder
    assert encoder is not None, "the direct encoding should be in use for this issuer"
    kwargs.setdefault("now", time.time())
    direct = issuer.issue(key, subject, serial=0x7F1234567890ABCDEF, **kwargs)  # type: ignore[arg-type]
    issuer._encoder = None
    try:
        built = issuer.issue(key, subject, serial=0x7F1234567890ABCDEF, **kwargs)  # type: ignore[arg-type]
    finally:
        issuer._encoder = encoder
    assert direct.not_before == built.not_before
    return direct.cert, built.cert


def make_openssl_pki(d: Path) -> Path:
    """A small PKI made by the openssl CLI in ``d``: a self-signed root (root.crt/key) and an
    end-entity server.crt/key it issued, the shape of OpenSSL's CMP test credentials."""
    ec_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        [
            "req", "-x509", *ec_args, "-keyout", "root.key", "-out", "root.crt", "-days", "365",
            "-subj", "/CN=Test Root CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-config", os.devnull,
        ],
        [
            "req", "-new", *ec_args, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=server", "-config", os.devnull,
        ],
        [
            "x509", "-req", "-in", "server.csr", "-CA", "root.crt", "-CAkey", "root.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "365", "-extfile", "ee.ext",
        ],
    ]  # fmt: skip
    (d / "ee.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    for step in steps:
        result = openssl(*step, cwd=d)
        assert result.returncode == 0, result.stderr
    return d


# Random Names: several attribute types and string types, escapes, multi-valued RDNs.
_NAME_OIDS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.STREET_ADDRESS,
    NameOID.DOMAIN_COMPONENT,
    NameOID.USER_ID,
    NameOID.SERIAL_NUMBER,
    NameOID.EMAIL_ADDRESS,
    NameOID.TITLE,
]
_STRING_TYPES = [
    x509.name._ASN1Type.UTF8String,
    x509.name._ASN1Type.PrintableString,
    x509.name._ASN1Type.IA5String,
    x509.name._ASN1Type.BMPString,
    x509.name._ASN1Type.UniversalString,
    x509.name._ASN1Type.T61String,
]
_VALUES = st.text(
    st.sampled_from(list("abcXYZ019 -.'=#\\\"+,;<>\0\té✓")), min_size=1, max_size=70
) | st.text(st.sampled_from(list("abcXYZ019-.'=é✓ ")), min_size=1, max_size=30)


@st.composite
def names(draw: st.DrawFn) -> x509.Name:
    rdns = []
    for _ in range(draw(st.integers(0, 4))):
        attrs = []
        for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
            oid = draw(st.sampled_from(_NAME_OIDS))
            value = draw(_VALUES)
            kind = draw(st.sampled_from(_STRING_TYPES))
            if kind in (x509.name._ASN1Type.PrintableString, x509.name._ASN1Type.IA5String):
                value = (
                    "".join(c for c in value if c.isascii() and (c.isalnum() or c in " '-.="))
                    or "x"
                )
            attrs.append(x509.NameAttribute(oid, value, _type=kind, _validate=False))
        oids_used = [a.oid for a in attrs]
        if len(set(oids_used)) == len(oids_used):
            rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)
