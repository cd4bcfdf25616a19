"""Hypothesis strategies for CMP messages built with ``fleet.cmp.messages`` dataclasses.

Every value is something pyasn1-alt-modules can decode with ``rfc9480.PKIMessage()``: names,
certificates, CSRs and CRLs are real DER (made once by ``cryptography`` at import), and the
opaque byte fields (extensions, controls, POP, EncryptedKey) are well-formed for their ASN.1 type.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from fleet.cmp import der, oids
from fleet.cmp import messages as m

# ---------------------------------------------------------------------------------------------
# Real certificate material, made once.

_NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key, issuer_key, *, ca: bool) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(_NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
EE_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ROOT_CERT = _cert("Test Root CA", "Test Root CA", ROOT_KEY, ROOT_KEY, ca=True)
EE_CERT = _cert("Device 1", "Test Root CA", EE_KEY, ROOT_KEY, ca=False)
ED_CERT = _cert("Device Ed", "Test Root CA", ED_KEY, ROOT_KEY, ca=False)
CERTS = tuple(c.public_bytes(serialization.Encoding.DER) for c in (ROOT_CERT, EE_CERT, ED_CERT))
SPKIS = tuple(
    k.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for k in (ROOT_KEY, EE_KEY, ED_KEY)
)
CSR = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(_name("Device CSR"))
    .sign(EE_KEY, hashes.SHA256())
    .public_bytes(serialization.Encoding.DER)
)
CRL = (
    x509.CertificateRevocationListBuilder()
    .issuer_name(_name("Test Root CA"))
    .last_update(_NOW)
    .next_update(_NOW + timedelta(days=7))
    .add_revoked_certificate(
        x509.RevokedCertificateBuilder().serial_number(7).revocation_date(_NOW).build()
    )
    .sign(ROOT_KEY, hashes.SHA256())
    .public_bytes(serialization.Encoding.DER)
)
SAN_EXTENSIONS = der.sequence(
    der.sequence(
        der.oid(oids.SUBJECT_ALT_NAME),
        der.octet_string(
            x509.SubjectAlternativeName(
                [x509.DNSName("device.example"), x509.UniformResourceIdentifier("urn:uuid:1")]
            ).public_bytes()
        ),
    )
)

# ---------------------------------------------------------------------------------------------
# Scalars

#: UTF-8-encodable text (no lone surrogates), non-ASCII included.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
free_texts = st.lists(texts, min_size=1, max_size=3).map(tuple)
octets = st.binary(min_size=0, max_size=40)
nonces = st.binary(min_size=16, max_size=16) | st.binary(min_size=1, max_size=64)


def _pyasn1_safe(value: int) -> bool:
    """pyasn1 0.6.5 encodes -2**(8k-1) with a spare 0xff octet (-128 as ff 80), which is not DER.

    fleet writes the minimal form; tests/cmp/test_der.py pins the difference down. Messages
    compared byte for byte with pyasn1's re-encoding avoid those values.
    """
    return value >= 0 or (-value) & (-value - 1) != 0 or (-value).bit_length() % 8 != 0


#: Integers for certReqId, serials, codes: small, negative (-1 is LCMPP's "no request"), huge.
ints = (
    st.sampled_from([0, 1, -1, 127, 128, 255, 256, -129, 2**63, 2**159])
    | st.integers(-(2**70), 2**70)
).filter(_pyasn1_safe)
small_ints = st.integers(-(2**31), 2**31).filter(_pyasn1_safe)
#: PKIFailureInfo values: the 27 defined bits, sometimes none, sometimes unknown high bits.
fail_bits = st.integers(0, 2**27 - 1) | st.sampled_from([0, 1, 1 << 26, 1 << 9 | 1 << 2, 1 << 40])
statuses = st.integers(0, 6)
times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=0))


@st.composite
def dotted_oids(draw) -> str:
    first = draw(st.integers(0, 2))
    second = draw(st.integers(0, 39) if first < 2 else st.integers(0, 2**40))
    rest = draw(st.lists(st.integers(0, 2**64), max_size=6))
    return ".".join(map(str, [first, second, *rest]))


# ---------------------------------------------------------------------------------------------
# Names and algorithm identifiers

_ATTRS = ("2.5.4.3", "2.5.4.10", "2.5.4.11", "2.5.4.5")  # CN, O, OU, serialNumber


@st.composite
def names(draw, allow_empty: bool = True) -> bytes:
    """An X.501 Name; sometimes the NULL-DN (``30 00``), sometimes multi-valued RDNs."""
    rdns = []
    for _ in range(draw(st.integers(0 if allow_empty else 1, 3))):
        atvs = [
            der.sequence(der.oid(draw(st.sampled_from(_ATTRS))), der.utf8_string(draw(texts)))
            for _ in range(draw(st.integers(1, 2)))
        ]
        rdns.append(der.set_of(*atvs))
    return der.sequence(*rdns)


@st.composite
def general_names(draw) -> bytes:
    kind = draw(st.sampled_from(["dir", "dir", "dns", "uri", "email"]))
    if kind == "dir":
        return m.directory_name(draw(names()))
    ascii_text = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30))
    tag = {"email": 0x81, "dns": 0x82, "uri": 0x86}[kind]
    return der.tlv(tag, ascii_text.encode("ascii"))


@st.composite
def pbm_parameters(draw) -> bytes:
    return der.sequence(
        der.octet_string(draw(octets)),
        der.algorithm_identifier(oids.SHA256),
        der.integer(draw(st.integers(1, 10_000))),
        der.algorithm_identifier(oids.HMAC_WITH_SHA256),
    )


algorithms = st.one_of(
    st.sampled_from(
        [
            der.algorithm_identifier(oids.ECDSA_SHA256),
            der.algorithm_identifier(oids.ED25519),
            der.algorithm_identifier(oids.RSA_SHA256, der.NULL_DER),
            der.algorithm_identifier(oids.SHA256),
        ]
    ),
    pbm_parameters().map(lambda p: der.algorithm_identifier(oids.PASSWORD_BASED_MAC, p)),
)

# ---------------------------------------------------------------------------------------------
# Header

info_values = st.one_of(
    st.just(m.InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER)),
    times.map(lambda t: m.InfoTypeAndValue(oids.IT_CONFIRM_WAIT_TIME, der.generalized_time(t))),
    free_texts.map(
        lambda ts: m.InfoTypeAndValue(oids.IT_CERT_PROFILE, der.sequence(*map(der.utf8_string, ts)))
    ),
    st.just(m.InfoTypeAndValue(oids.IT_CA_CERTS)),
    st.just(m.InfoTypeAndValue(oids.IT_CA_CERTS, der.sequence(*CERTS[:2]))),
    dotted_oids().map(m.InfoTypeAndValue),
    st.tuples(dotted_oids(), octets).map(
        lambda p: m.InfoTypeAndValue(p[0], der.octet_string(p[1]))
    ),
)
general_info = st.lists(info_values, min_size=1, max_size=3).map(tuple)


@st.composite
def headers(draw) -> m.PKIHeader:
    opt = lambda s: draw(st.none() | s)
    return m.PKIHeader(
        sender=draw(general_names()),
        recipient=draw(general_names()),
        transaction_id=opt(nonces),
        sender_nonce=opt(nonces),
        recip_nonce=opt(nonces),
        sender_kid=opt(octets),
        recip_kid=opt(octets),
        message_time=opt(times),
        protection_alg=opt(algorithms),
        free_text=draw(st.just(()) | free_texts),
        general_info=draw(st.just(()) | general_info),
        pvno=draw(st.sampled_from([1, 2, 3]) | small_ints),
    )


# ---------------------------------------------------------------------------------------------
# Bodies


@st.composite
def templates(draw, empty_subject: bool = True) -> m.CertTemplate:
    opt = lambda s: draw(st.none() | s)
    validity = opt(st.builds(m.Validity, st.none() | times, st.none() | times))
    return m.CertTemplate(
        subject=opt(names(allow_empty=empty_subject)),
        public_key=opt(st.sampled_from(SPKIS)),
        extensions=opt(st.just(SAN_EXTENSIONS)),
        issuer=opt(names(allow_empty=False)),
        serial=opt(ints),
        validity=validity,
        version=opt(st.sampled_from([2, 0, 1])),
        signing_alg=opt(algorithms),
    )


@st.composite
def popos(draw) -> m.Popo:
    kind = draw(st.sampled_from(["signature", "signature", "raVerified", "keyEncipherment"]))
    if kind == "raVerified":
        return m.Popo("raVerified")
    if kind == "keyEncipherment":
        # [2] POPOPrivKey (a CHOICE, so EXPLICIT) -> subsequentMessage [1] encrCert(0)
        return m.Popo("keyEncipherment", raw=b"\xa2\x03\x81\x01\x00")
    poposk_input = None
    if draw(st.booleans()):
        # POPOSigningKeyInput [0] IMPLICIT: authInfo sender [0] GeneralName (explicit), publicKey
        poposk_input = der.tlv(
            0xA0, der.explicit(0, draw(general_names())) + draw(st.sampled_from(SPKIS))
        )
    return m.Popo(
        "signature",
        algorithm=draw(algorithms),
        signature=draw(st.binary(min_size=1, max_size=72)),
        poposk_input=poposk_input,
    )


#: Controls with a regToken (id-regCtrl-regToken, UTF8String).
controls = texts.map(
    lambda t: der.sequence(der.sequence(der.oid("1.3.6.1.5.5.7.5.1.1"), der.utf8_string(t)))
)


@st.composite
def cert_req_msgs(draw, empty_subject: bool = True) -> m.CertReqMsg:
    return m.CertReqMsg(
        cert_req_id=draw(ints),
        template=draw(templates(empty_subject)),
        popo=draw(st.none() | popos()),
        controls=draw(st.none() | controls),
    )


def cert_req_messages(empty_subject: bool = True):
    return st.lists(cert_req_msgs(empty_subject), min_size=1, max_size=2).map(
        lambda ms: m.CertReqMessages(tuple(ms))
    )


status_infos = st.builds(m.PKIStatusInfo, statuses, st.just(()) | free_texts, st.none() | fail_bits)
#: A minimal EncryptedKey: encryptedValue SEQUENCE { encValue BIT STRING }.
encrypted_keys = octets.map(lambda b: der.sequence(der.bit_string(b)))


@st.composite
def cert_responses(draw) -> m.CertResponse:
    cert = draw(st.none() | st.sampled_from(CERTS))
    return m.CertResponse(
        cert_req_id=draw(ints),
        status=draw(status_infos),
        certificate=cert,
        rsp_info=draw(st.none() | octets),
        private_key=draw(st.none() | encrypted_keys) if cert is not None else None,
    )


cert_lists = st.lists(st.sampled_from(CERTS), min_size=1, max_size=3).map(tuple)
cert_rep_messages = st.builds(
    m.CertRepMessage,
    st.lists(cert_responses(), max_size=2).map(tuple),
    st.just(()) | cert_lists,
)
cert_statuses = st.builds(
    m.CertStatus,
    st.binary(min_size=0, max_size=64),
    ints,
    st.none() | status_infos,
    st.none()
    | st.sampled_from(
        [der.algorithm_identifier(oids.SHA256), der.algorithm_identifier(oids.SHA384)]
    ),
)


def crl_reason_extensions(reason: int) -> bytes:
    """crlEntryDetails with a CRLReason extension (extnValue wraps an ENUMERATED)."""
    enum = der.tlv(der.ENUMERATED, der.integer(reason)[2:])
    return der.sequence(der.sequence(der.oid(oids.CRL_REASON), der.octet_string(enum)))


rev_details = st.builds(
    m.RevDetails,
    templates(empty_subject=False),
    st.none() | st.integers(0, 10).map(crl_reason_extensions),
)
cert_ids = st.builds(m.CertId, general_names(), ints)
rev_rep = st.builds(
    m.RevRepContent,
    st.lists(status_infos, min_size=1, max_size=2).map(tuple),
    st.lists(cert_ids, max_size=2).map(tuple),
    st.just(()) | st.just((CRL,)),
)
gen_content = st.lists(info_values, max_size=3).map(lambda items: m.GenMsgContent(tuple(items)))
error_content = st.builds(
    m.ErrorMsgContent, status_infos, st.none() | small_ints, st.just(()) | free_texts
)
poll_req = st.lists(ints, min_size=1, max_size=3).map(lambda ids: m.PollReqContent(tuple(ids)))
poll_rep = st.lists(
    st.builds(m.PollRepEntry, ints, small_ints, st.just(()) | free_texts), min_size=1, max_size=3
).map(lambda es: m.PollRepContent(tuple(es)))

_SIMPLE_HEADER = m.PKIHeader(
    m.NULL_DN_GENERAL_NAME, m.NULL_DN_GENERAL_NAME, transaction_id=b"\x01" * 16
)
NESTED_INNER = m.encode(m.PKIMessage(_SIMPLE_HEADER, m.BodyType.PKICONF, m.PKIConfirmContent()))


def bodies(empty_subject: bool = True) -> dict[m.BodyType, st.SearchStrategy]:
    """A body strategy for every body type fleet interprets."""
    req = cert_req_messages(empty_subject)
    return {
        m.BodyType.IR: req,
        m.BodyType.CR: req,
        m.BodyType.KUR: req,
        m.BodyType.P10CR: st.just(m.P10Request(CSR)),
        m.BodyType.IP: cert_rep_messages,
        m.BodyType.CP: cert_rep_messages,
        m.BodyType.KUP: cert_rep_messages,
        m.BodyType.CERTCONF: st.lists(cert_statuses, max_size=2).map(
            lambda s: m.CertConfirmContent(tuple(s))
        ),
        m.BodyType.PKICONF: st.just(m.PKIConfirmContent()),
        m.BodyType.RR: st.lists(rev_details, min_size=1, max_size=2).map(
            lambda d: m.RevReqContent(tuple(d))
        ),
        m.BodyType.RP: rev_rep,
        m.BodyType.GENM: gen_content,
        m.BodyType.GENP: gen_content,
        m.BodyType.ERROR: error_content,
        m.BodyType.POLLREQ: poll_req,
        m.BodyType.POLLREP: poll_rep,
        m.BodyType.NESTED: st.just(m.NestedMessageContent((NESTED_INNER,))),
    }


BODY_TYPES = tuple(bodies())


@st.composite
def pki_messages(
    draw, body_type: m.BodyType | None = None, empty_subject: bool = True
) -> m.PKIMessage:
    """A whole PKIMessage; ``body_type`` None draws one of every interpreted type."""
    if body_type is None:
        body_type = draw(st.sampled_from(BODY_TYPES))
    return m.PKIMessage(
        header=draw(headers()),
        body_type=body_type,
        body=draw(bodies(empty_subject)[body_type]),
        protection=draw(st.none() | st.binary(min_size=0, max_size=72)),
        extra_certs=draw(st.just(()) | cert_lists),
    )


def mutate(draw, data: bytes, edits: int, *, plausible_tlvs: bool = False) -> bytes:
    """``data`` after ``edits`` random byte edits (set, flip a bit, insert, delete; with
    ``plausible_tlvs``, also a plausible tag/length pair written somewhere inside)."""
    out = bytearray(data)
    ops = ["set", "set", "flip", "insert", "delete"] + (["tlv"] if plausible_tlvs else [])
    for _ in range(edits):
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(ops))
        if op == "set":
            out[i] = draw(st.integers(0, 255))
        elif op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del out[i : i + draw(st.integers(1, 4))]
        else:
            tags = [0x02, 0x03, 0x04, 0x06, 0x0C, 0x30, 0xA0, 0xA1, 0xA4]
            out[i : i + 2] = bytes([draw(st.sampled_from(tags)), draw(st.integers(0, 255))])
    return bytes(out)
