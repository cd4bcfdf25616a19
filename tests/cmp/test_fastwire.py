"""fleet.cmp.fastwire: every twin against its reference, on valid and on mutated bytes.

Readers: where a twin answers, it answers exactly what the reference decoder answers; where it
does not (None, or an error), the dispatcher built on it ends with the reference's answer, the
same message or the same error. Writers: the reference encoder's bytes for the same values.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.cmp import der, fastwire, oids
from fleet.cmp import messages as m
from fleet.cmp.client import ClientConfig, ClientTransaction, Send
from fleet.cmp.messages import decoding, encoding
from fleet.cmp.requests import CertRequest
from fleet.cmp.trust import public_key_of
from fleet.errors import FleetError

from . import strategies as S
from .ca_stub import CaStub

_MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPENSSL_CORPUS = sorted((Path(__file__).parent.parent / "data" / "openssl").glob("*.der"))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])


def outcome(reader, *args: object) -> object:  # type: ignore[no-untyped-def]
    """The reader's answer, or its error as (type, message): both must match the reference's."""
    try:
        return reader(*args)
    except FleetError as exc:
        return type(exc), str(exc)


def as_decode_does(reader):  # type: ignore[no-untyped-def]
    """A body reader wrapped as ``decoding.decode_with`` calls it (IndexError/ValueError become a
    MessageError there)."""

    def read(body_type: m.BodyType, node: der.Tlv) -> m.Body:
        try:
            return reader(body_type, node)
        except (IndexError, ValueError) as exc:
            raise m.MessageError("malformed") from exc

    return read


def test_the_messages_names_are_the_twins() -> None:
    """``messages.decode`` and friends, which every caller uses, are fastwire's dispatchers."""
    assert m.decode is fastwire.decode
    assert m.decode_header is fastwire.decode_header and m.decode_body is fastwire.decode_body
    assert m.read_header_fields is fastwire.read_header_fields
    assert m.message_time_der is fastwire.message_time_der
    assert m._decode_header_general is decoding.decode_header
    assert m._decode_body_general is decoding.decode_body


_IMPORT_FIRST = """
import importlib, sys
importlib.import_module(sys.argv[1])
from fleet.cmp import fastwire, messages, server
assert messages.decode is fastwire.decode and messages.read_header_fields is fastwire.read_header_fields
print("ok")
"""


@pytest.mark.parametrize(
    "first", ["fleet.cmp.fastwire", "fleet.cmp.messages", "fleet.cmp.messages.decoding", "fleet.cmp.server"]
)
def test_fastwire_and_messages_import_in_either_order(first: str) -> None:
    """messages binds fastwire's names on first use, so neither import finds the other unfinished."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_FIRST, first], capture_output=True, text=True, timeout=120,
        check=False, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ---------------------------------------------------------------------------------------------
# Whole messages


@st.composite
def message_bytes(draw) -> bytes:
    """A message as a peer may send it: generated or recorded from OpenSSL, maybe mutated."""
    corpus = [p.read_bytes() for p in OPENSSL_CORPUS]
    data = draw(
        S.pki_messages().map(m.encode) | (st.sampled_from(corpus) if corpus else st.nothing())
    )
    edits = draw(st.integers(0, 4))
    return S.mutate(draw, data, edits, plausible_tlvs=True) if edits else data


@_MANY
@given(message_bytes())
def test_decode_is_the_reference_decode(data: bytes) -> None:
    assert outcome(fastwire.decode, data) == outcome(decoding.decode, data)


def test_decode_of_the_openssl_corpus() -> None:
    for path in OPENSSL_CORPUS:
        data = path.read_bytes()
        assert fastwire.decode(data) == decoding.decode(data), path.name


# ---------------------------------------------------------------------------------------------
# Headers


@st.composite
def header_nodes(draw) -> der.Tlv:
    """A header as decode() meets it: valid, or mutated."""
    data = bytearray(m.encode_header(draw(S.headers())))
    for _ in range(draw(st.integers(0, 3))):
        if len(data) < 3:
            break
        i = draw(st.integers(2, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    try:
        return der.parse(bytes(data))
    except der.DerError:
        return der.parse(m.encode_header(draw(S.headers())))


@_MANY
@given(header_nodes())
def test_header_reader_agrees_with_the_reference(node: der.Tlv) -> None:
    """Where the offset-based reader answers, it answers exactly what the reference does."""
    try:
        fast = fastwire.read_header_fields(node.data, node.cstart, node.end, node.depth)
    except FleetError:
        fast = None  # decode_header then asks the reference
    if fast is not None:
        assert fast == decoding.decode_header(node)
    assert outcome(fastwire.decode_header, node) == outcome(decoding.decode_header, node)


def test_header_reader_takes_the_usual_header() -> None:
    header = m.PKIHeader(
        sender=m.directory_name(m.NULL_DN),
        recipient=m.NULL_DN_GENERAL_NAME,
        transaction_id=b"t" * 16,
        sender_nonce=b"n" * 16,
        recip_nonce=b"r" * 16,
        sender_kid=b"ref",
        message_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        protection_alg=der.sequence(der.oid("1.2.840.113533.7.66.13")),
        general_info=(m.InfoTypeAndValue("1.3.6.1.5.5.7.4.13", der.NULL_DER),),
    )
    node = der.parse(m.encode_header(header))
    assert fastwire.read_header_fields(node.data, node.cstart, node.end) == header


@st.composite
def client_headers(draw) -> m.PKIHeader:
    """The headers a client writes: transactionID and senderNonce, no recipKID or freeText."""
    header = draw(S.headers())
    return dataclasses.replace(
        header,
        recip_kid=None,
        free_text=(),
        transaction_id=draw(S.nonces),
        sender_nonce=draw(S.nonces),
    )


@_MANY
@given(client_headers(), st.sampled_from(["datetime", "timestamp"]))
def test_header_writer_writes_what_encode_header_writes(header: m.PKIHeader, form: str) -> None:
    writer = fastwire.HeaderWriter(
        header.sender,
        header.recipient,
        header.protection_alg,
        header.sender_kid,
        header.transaction_id,
    )
    when: datetime | float | None = header.message_time
    if when is not None and form == "timestamp":
        when = when.timestamp() + 0.25  # the fraction is dropped, as the reference drops it
    assert header.sender_nonce is not None
    written = writer.header(
        header.sender_nonce,
        pvno=header.pvno,
        message_time=when,
        recip_nonce=header.recip_nonce,
        info=header.general_info,
    )
    assert written == encoding.encode_header(header)


# ---------------------------------------------------------------------------------------------
# ip/cp/kup bodies


@st.composite
def usual_cert_reps(draw) -> m.CertRepMessage:
    """The shape the fast ip reader takes: optional caPubs, one response, status only."""
    cert = draw(st.none() | st.sampled_from(S.CERTS))
    response = m.CertResponse(
        draw(st.integers(0, 127)), m.PKIStatusInfo(draw(st.integers(0, 6))), cert
    )
    return m.CertRepMessage((response,), draw(st.just(()) | S.cert_lists))


@st.composite
def cert_rep_nodes(draw) -> der.Tlv:
    body = draw(usual_cert_reps() | S.cert_rep_messages)
    data = bytearray(m.encode_body_content(m.BodyType.IP, body))
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    try:
        return der.parse(bytes(data))
    except der.DerError:
        return der.parse(m.encode_body_content(m.BodyType.IP, draw(usual_cert_reps())))


@_MANY
@given(cert_rep_nodes())
def test_cert_rep_reader_agrees_with_the_reference(node: der.Tlv) -> None:
    reference = as_decode_does(decoding.decode_body)
    try:
        fast = fastwire.decode_cert_rep(node)
    except FleetError:
        fast = None
    if fast is not None:
        assert fast == reference(m.BodyType.IP, node)
    assert outcome(as_decode_does(fastwire.decode_body), m.BodyType.IP, node) == outcome(
        reference, m.BodyType.IP, node
    )


def test_cert_rep_reader_takes_the_usual_ip() -> None:
    for body in (
        m.CertRepMessage((m.CertResponse(0, m.ACCEPTED, S.CERTS[0]),)),
        m.CertRepMessage((m.CertResponse(0, m.ACCEPTED, S.CERTS[0]),), (S.CERTS[1],)),
        m.CertRepMessage((m.CertResponse(5, m.PKIStatusInfo(m.PKIStatus.WAITING)),)),
    ):
        node = der.parse(m.encode_body_content(m.BodyType.IP, body))
        assert fastwire.decode_cert_rep(node) == body


# ---------------------------------------------------------------------------------------------
# messageTime


@given(
    st.floats(min_value=0, max_value=2**34, allow_nan=False)
    | st.integers(0, 2**34).map(lambda s: s - 5e-7)
)
def test_message_time_is_the_reference_encoding(stamp: float) -> None:
    now = datetime.fromtimestamp(stamp, UTC)
    expected = encoding.message_time_der(now)
    assert fastwire.message_time_der(now) == expected
    assert fastwire.message_time_der(now) == expected  # the cached value


@settings(max_examples=200, deadline=None)
@given(now=st.floats(0, 2**33, allow_nan=False).filter(lambda t: t % 1 < 0.999))
def test_message_time_from_a_timestamp_equals_the_datetime_form(now: float) -> None:
    expected = encoding.message_time_der(datetime.fromtimestamp(now, UTC))
    assert encoding.message_time_der(now) == expected
    assert fastwire.message_time_der(now) == expected
    assert fastwire.message_time_der(now) == expected  # the cached value


def test_message_time_cache_follows_the_given_time_not_a_clock() -> None:
    """Alternating seconds (and forms) never return a stale encoding."""
    a, b = datetime(2030, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
    for when in (a, b, a.timestamp(), b, b.timestamp() + 0.9, a):
        assert fastwire.message_time_der(when) == encoding.message_time_der(when)


# ---------------------------------------------------------------------------------------------
# Certificate request bodies


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from([m.BodyType.IR, m.BodyType.CR, m.BodyType.KUR]),
    subject=S.names(),
    spki=st.sampled_from(S.SPKIS),
    extensions=st.none() | st.just(S.SAN_EXTENSIONS),
    algorithm=S.algorithms,
    signature=st.binary(max_size=80),
)
def test_cert_request_writers_write_what_the_encoders_write(
    kind: m.BodyType,
    subject: bytes,
    spki: bytes,
    extensions: bytes | None,
    algorithm: bytes,
    signature: bytes,
) -> None:
    template = m.CertTemplate(subject=subject, public_key=spki, extensions=extensions)
    cert_request = fastwire.cert_request_der(subject, spki, extensions)
    assert cert_request == encoding.encode_cert_request(0, template)
    popo = m.Popo("signature", algorithm, signature)
    body = m.CertReqMessages((m.CertReqMsg(0, template, popo),))
    assert fastwire.signed_cert_req_body(
        kind, cert_request, algorithm, signature
    ) == encoding.encode_body(kind, body)


# ---------------------------------------------------------------------------------------------
# The issued certificate's SubjectPublicKeyInfo, sliced from its DER


def _reference_spki(cert: x509.Certificate) -> bytes:
    return public_key_of(cert).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _corpus_certs() -> list[bytes]:
    """Every certificate in the recorded OpenSSL messages (extraCerts, caPubs, issued ones)."""
    found: set[bytes] = set()
    for path in OPENSSL_CORPUS:
        msg = decoding.decode(path.read_bytes())
        found.update(msg.extra_certs)
        if isinstance(msg.body, m.CertRepMessage):
            found.update(msg.body.ca_pubs)
            found.update(r.certificate for r in msg.body.responses if r.certificate is not None)
    return sorted(found)


def _made_certs() -> list[bytes]:
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "spki")])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ders = list(S.CERTS)
    keys = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP384R1()),
    )
    for key in keys:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(7)
            .not_valid_before(start)
            .not_valid_after(start.replace(year=2026))
        )
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        ders.append(builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER))  # type: ignore[arg-type]
    return ders


CERT_DERS = _corpus_certs() + _made_certs()


def test_spki_is_sliced_from_the_certificate() -> None:
    assert len(CERT_DERS) > len(S.CERTS) + 3  # the corpus brought OpenSSL's own certificates
    for cert_der in CERT_DERS:
        assert fastwire.spki_of_certificate(cert_der) == _reference_spki(
            x509.load_der_x509_certificate(cert_der)
        )
    assert fastwire.spki_of_certificate(b"\x30\x03\x02\x01\x01") is None
    assert fastwire.spki_of_certificate(b"junk") is None


# cryptography warns about mutated serial numbers it still parses; the mutations are the point
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@_MANY
@given(st.data())
def test_same_key_agrees_with_the_reference_on_mutated_certificates(data: st.DataObject) -> None:
    """The client's key check (the slice first, cryptography's key when they differ) answers as
    comparing cryptography's re-encoded key would, whatever the bytes."""
    from fleet.cmp.client import _load_issued, _same_key
    from fleet.cmp.trust import CertificateError, public_key_of

    original = data.draw(st.sampled_from(CERT_DERS))
    mutated = S.mutate(data.draw, original, data.draw(st.integers(1, 3)), plausible_tlvs=True)
    try:
        cert = x509.load_der_x509_certificate(mutated)
        reference = _reference_spki(cert)
    except (ValueError, x509.InvalidVersion, FleetError):
        # cryptography refuses these bytes: the client fails before comparing keys, as its own error
        with pytest.raises(CertificateError):
            _load_issued(mutated)
            public_key_of(x509.load_der_x509_certificate(mutated))
        return
    for spki in {reference, *S.SPKIS, fastwire.spki_of_certificate(original) or b""}:
        assert _same_key(mutated, cert, spki) == (reference == spki)


# ---------------------------------------------------------------------------------------------
# The CA's responses: encoded from cached parts, byte for byte what the reference encodes

_GN = st.sampled_from(
    [m.NULL_DN_GENERAL_NAME, m.directory_name(_name("CA").public_bytes()), b"\x82\x03a.b"]
)
_OPT = st.none() | st.binary(min_size=1, max_size=200)
_INFO = st.sampled_from(
    [
        (),
        (m.InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),),
        (m.InfoTypeAndValue(oids.IT_CONFIRM_WAIT_TIME, der.generalized_time(datetime(2031, 1, 2, tzinfo=UTC))),),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    sender=_GN, recipient=_GN, second=st.integers(0, 2**33), alg=_OPT, kid=_OPT, tid=_OPT,
    nonce=st.binary(min_size=16, max_size=16), recip_nonce=_OPT, info=_INFO,
)
def test_header_from_cached_parts_matches_encode_header(
    sender: bytes, recipient: bytes, second: int, alg: bytes | None, kid: bytes | None, tid: bytes | None,
    nonce: bytes, recip_nonce: bytes | None, info: tuple[m.InfoTypeAndValue, ...],
) -> None:
    when = datetime.fromtimestamp(second, UTC)
    reference = m.encode_header(m.PKIHeader(
        sender=sender, recipient=recipient, transaction_id=tid, sender_nonce=nonce, recip_nonce=recip_nonce,
        sender_kid=kid, message_time=when, protection_alg=alg, general_info=info, pvno=2,
    ))
    time_der = der.explicit(0, der.generalized_time(when))
    info_der = fastwire.general_info_der(info) if info else b""
    assert fastwire.response_header_der(
        sender, recipient, time_der, alg, kid, tid, nonce, recip_nonce, info_der
    ) == reference


_STATUS = st.sampled_from(
    [m.ACCEPTED, m.PKIStatusInfo(m.PKIStatus.ACCEPTED), m.PKIStatusInfo(m.PKIStatus.GRANTED_WITH_MODS),
     m.PKIStatusInfo(m.PKIStatus.REJECTION, ("no",), m.FailInfo.badPOP.mask), m.PKIStatusInfo(m.PKIStatus.WAITING)]
)
_CERT_RESPONSE = st.builds(
    m.CertResponse,
    cert_req_id=st.integers(-1, 300),
    status=_STATUS,
    certificate=st.none() | st.binary(min_size=1, max_size=400).map(lambda b: der.sequence(b)),
    rsp_info=st.none() | st.binary(max_size=4),
    private_key=st.none() | st.just(der.sequence(b"")),
)


@settings(max_examples=300, deadline=None)
@given(
    body_type=st.sampled_from([m.BodyType.IP, m.BodyType.CP, m.BodyType.KUP]),
    responses=st.lists(_CERT_RESPONSE, min_size=0, max_size=2).map(tuple),
    ca_pubs=st.lists(st.binary(min_size=1, max_size=300).map(lambda b: der.sequence(b)), max_size=2).map(tuple),
)
def test_cert_rep_from_cached_parts_matches_encode_body(
    body_type: m.BodyType, responses: tuple[m.CertResponse, ...], ca_pubs: tuple[bytes, ...]
) -> None:
    body = m.CertRepMessage(responses, ca_pubs)
    fast = fastwire.cert_rep_der(body_type, body)
    if fast is not None:
        assert fast == m.encode_body(body_type, body)
    else:  # only the common shape takes the direct path
        assert len(responses) != 1 or responses[0].status != m.ACCEPTED or responses[0].certificate is None \
            or responses[0].rsp_info is not None or responses[0].private_key is not None


@settings(max_examples=300, deadline=None)
@given(
    header=st.binary(min_size=1, max_size=300).map(der.sequence),
    body=st.binary(max_size=300).map(lambda b: der.explicit(23, der.sequence(b))),
    protection=st.binary(max_size=600),
    certs=st.lists(st.binary(min_size=1, max_size=300).map(der.sequence), max_size=3).map(tuple),
)
def test_response_assembled_from_parts_matches_assemble(
    header: bytes, body: bytes, protection: bytes, certs: tuple[bytes, ...]
) -> None:
    """Short and long protections (the BIT STRING's length form changes at 0x7C octets), with and
    without extraCerts."""
    assert fastwire.response_der(header, body, protection, certs) == encoding.assemble(header, body, protection, certs)


# ---------------------------------------------------------------------------------------------
# The CA's request reader: the usual ir/cr/kur and certConf, as messages.decode reads them



@st.composite
def _usual_requests(draw: st.DrawFn) -> m.PKIMessage:
    """The shapes ``fastwire.read_request`` takes: one plain CertReqMsg or one CertStatus."""
    header = dataclasses.replace(draw(S.headers()), free_text=(), pvno=draw(st.integers(0, 127)))
    body_type = draw(st.sampled_from([m.BodyType.IR, m.BodyType.CR, m.BodyType.KUR, m.BodyType.CERTCONF]))
    body: m.Body
    if body_type is m.BodyType.CERTCONF:
        status = m.CertStatus(draw(st.binary(max_size=64)), draw(st.integers(0, 127)),
                               draw(st.none() | S.status_infos))
        body = m.CertConfirmContent((status,))
    else:
        template = m.CertTemplate(
            subject=draw(st.none() | S.names()), public_key=draw(st.none() | st.sampled_from(S.SPKIS)),
            extensions=draw(st.none() | st.just(S.SAN_EXTENSIONS)),
        )
        popo = m.Popo("signature", draw(S.algorithms), draw(st.binary(max_size=72)))
        body = m.CertReqMessages((
            m.CertReqMsg(draw(st.integers(0, 127)), template, popo, draw(st.none() | S.controls)),
        ))
    return m.PKIMessage(header, body_type, body, draw(st.binary(max_size=40)))


@st.composite
def _request_bytes(draw: st.DrawFn) -> bytes:
    """Usual requests, any other message, and both mutated (as test_messages' fuzz does)."""
    data = m.encode(draw(_usual_requests() | S.pki_messages()))
    return S.mutate(draw, data, draw(st.sampled_from([0, 0, 1, 2, 3])))


def _same_message(got: m.PKIMessage, expected: m.PKIMessage) -> None:
    assert got == expected
    assert got.protected_part == expected.protected_part  # compare=False fields too
    if isinstance(expected.body, m.CertReqMessages):
        assert isinstance(got.body, m.CertReqMessages)
        for a, b in zip(got.body.messages, expected.body.messages, strict=True):
            assert a.cert_request_der == b.cert_request_der
            assert (a.popo.raw if a.popo else None) == (b.popo.raw if b.popo else None)


@settings(max_examples=300, deadline=None)
@given(data=_request_bytes())
def test_request_reader_agrees_with_messages_decode(data: bytes) -> None:
    try:
        expected = m.decode(data)
    except Exception as exc:  # noqa: BLE001  # whatever decode raises, the server's reader raises
        with pytest.raises(type(exc)):
            fastwire.decode_request(data)
        return
    _same_message(fastwire.decode_request(data), expected)


@settings(max_examples=100, deadline=None)
@given(msg=_usual_requests())
def test_request_reader_takes_the_usual_shapes(msg: m.PKIMessage) -> None:
    data = m.encode(msg)
    fast = fastwire.read_request(data)
    assert fast is not None
    _same_message(fast, m.decode(data))


def test_request_reader_takes_what_fleets_client_sends() -> None:
    stub = CaStub()
    tx = ClientTransaction(ClientConfig(stub.mac_protector()), CertRequest(m.BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=_name("fast")))
    ir = tx.start().data
    assert fastwire.read_request(ir) is not None
    conf = tx.receive(stub.answer(ir))
    assert isinstance(conf, Send) and fastwire.read_request(conf.data) is not None
