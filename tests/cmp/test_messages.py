"""fleet.cmp.messages: the codec round trip, strict decoding of hostile bytes, and the helpers.

pyasn1 comparisons live in test_messages_pyasn1.py; this file needs no reference codec.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fleet.cmp import der, oids
from fleet.cmp import messages as m
from fleet.cmp.der import DerError
from fleet.cmp.messages import MessageError
from fleet.errors import FleetError

from . import strategies as S

_FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)


def normalise(msg: m.PKIMessage) -> m.PKIMessage:
    """Clear what decoding adds for protection checks (received bytes), so values compare."""
    body = msg.body
    if isinstance(body, m.CertReqMessages):
        reqs = []
        for r in body.messages:
            popo = r.popo
            if popo is not None and popo.kind in ("signature", "raVerified"):
                popo = dataclasses.replace(popo, raw=None)
            reqs.append(dataclasses.replace(r, popo=popo, cert_request_der=b""))
        body = m.CertReqMessages(tuple(reqs))
    return dataclasses.replace(msg, body=body)


# ---------------------------------------------------------------------------------------------
# Round trip


@_FAST
@given(S.pki_messages())
def test_round_trip(msg: m.PKIMessage) -> None:
    data = m.encode(msg)
    decoded = m.decode(data)
    assert normalise(decoded) == msg
    assert m.encode(decoded) == data
    header_der, body_der = m.encode_header(msg.header), m.encode_body(msg.body_type, msg.body)
    assert decoded.protected_part == m.protected_part(header_der, body_der)
    assert data == m.assemble(header_der, body_der, msg.protection, msg.extra_certs)
    if isinstance(decoded.body, m.CertReqMessages):
        for got, sent in zip(decoded.body.messages, msg.body.messages):
            assert got.cert_request_der == m.encode_cert_request(
                sent.cert_req_id, sent.template, sent.controls
            )


def test_decoded_cert_request_der_is_reused_verbatim() -> None:
    """A relayed request keeps the exact signed CertRequest bytes, even with a changed template."""
    tmpl = m.CertTemplate(subject=m.NULL_DN, public_key=S.SPKIS[0])
    req = m.CertReqMsg(0, tmpl, m.Popo("raVerified"))
    header = m.PKIHeader(m.NULL_DN_GENERAL_NAME, m.NULL_DN_GENERAL_NAME)
    data = m.encode(m.PKIMessage(header, m.BodyType.IR, m.CertReqMessages((req,))))
    got = m.decode(data).body.messages[0]
    changed = dataclasses.replace(got, template=m.CertTemplate())
    assert m.encode_cert_req_msg(changed) == m.encode_cert_req_msg(got)


# ---------------------------------------------------------------------------------------------
# Real-looking messages for the rejection tests

HEADER = m.PKIHeader(
    sender=m.directory_name(
        der.sequence(der.set_of(der.sequence(der.oid("2.5.4.3"), der.utf8_string("dev"))))
    ),
    recipient=m.NULL_DN_GENERAL_NAME,
    transaction_id=b"\x11" * 16,
    sender_nonce=b"\x22" * 16,
    protection_alg=der.algorithm_identifier(oids.ECDSA_SHA256),
    free_text=("ünïcode",),
    general_info=(m.InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),),
)
IR = m.encode(
    m.PKIMessage(
        HEADER,
        m.BodyType.IR,
        m.CertReqMessages(
            (
                m.CertReqMsg(
                    0,
                    m.CertTemplate(
                        subject=m.NULL_DN, public_key=S.SPKIS[1], extensions=S.SAN_EXTENSIONS
                    ),
                    m.Popo("signature", der.algorithm_identifier(oids.ECDSA_SHA256), b"\x30" * 70),
                ),
            )
        ),
        protection=b"\x01" * 64,
        extra_certs=S.CERTS[1:],
    )
)
IP = m.encode(
    m.PKIMessage(
        HEADER,
        m.BodyType.IP,
        m.CertRepMessage(
            (m.CertResponse(0, m.PKIStatusInfo(0, ("ok",), None), certificate=S.CERTS[1]),),
            ca_pubs=S.CERTS[:1],
        ),
        protection=b"\x02" * 32,
        extra_certs=S.CERTS[:1],
    )
)
ERROR = m.encode(
    m.PKIMessage(
        HEADER,
        m.BodyType.ERROR,
        m.ErrorMsgContent(m.PKIStatusInfo(2, ("no",), m.FailInfo.badPOP.mask), 7, ("détail",)),
    )
)
OPENSSL_CORPUS = sorted((Path(__file__).parent.parent / "data" / "openssl").glob("*.der"))
REAL = {"ir": IR, "ip": IP, "error": ERROR} | {p.name: p.read_bytes() for p in OPENSSL_CORPUS}


@pytest.mark.parametrize("name", REAL)
def test_every_truncation_is_rejected(name: str) -> None:
    data = REAL[name]
    m.decode(data)
    for cut in range(len(data)):
        with pytest.raises(DerError):
            m.decode(data[:cut])


@pytest.mark.parametrize("name", REAL)
def test_every_extension_is_rejected(name: str) -> None:
    with pytest.raises(DerError, match="trailing"):
        m.decode(REAL[name] + b"\x00")


def _decode_or_fleet_error(data: bytes) -> m.PKIMessage | None:
    """Decode; anything but a DerError/MessageError escaping is a bug in the codec."""
    try:
        msg = m.decode(data)
    except (DerError, MessageError):
        return None
    # A message that decodes must also survive the helpers a caller uses next.
    try:
        m.encode(msg)
        _ = msg.header.implicit_confirm
        m.general_name_directory(msg.header.sender)
        if isinstance(msg.body, m.RevReqContent):
            for d in msg.body.details:
                _ = d.reason
        if isinstance(msg.body, (m.CertRepMessage, m.ErrorMsgContent)):
            for s in getattr(msg.body, "responses", ()):
                s.status.describe()
    except FleetError:
        pass
    return msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_fleet_error(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_fuzz_random_bytes_in_a_sequence(data: bytes) -> None:
    """Random content behind a valid outer header reaches the field decoders."""
    _decode_or_fleet_error(der.sequence(data))
    _decode_or_fleet_error(der.sequence(der.sequence(data), der.explicit(0, data)))


@st.composite
def mutated(draw) -> bytes:
    data = draw(st.sampled_from(list(REAL.values())) | S.pki_messages().map(m.encode))
    return S.mutate(draw, data, draw(st.integers(1, 4)), plausible_tlvs=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_messages(data: bytes) -> None:
    _decode_or_fleet_error(data)


@given(st.floats(min_value=0, max_value=2**34, allow_nan=False) | st.integers(0, 2**34).map(lambda s: s - 5e-7))
def test_message_time_is_the_whole_second_encode_header_writes(stamp: float) -> None:
    now = datetime.fromtimestamp(stamp, UTC)
    header = m.encode_header(dataclasses.replace(HEADER, message_time=now.replace(microsecond=0)))
    assert m.message_time_der(now) in header
    assert m.message_time_der(now) == der.explicit(0, der.generalized_time(now.replace(microsecond=0)))


def _msg(header: bytes, body: bytes, *rest: bytes) -> bytes:
    return der.sequence(header, body, *rest)


H = m.encode_header(HEADER)
_SUBJECT = der.explicit(5, m.NULL_DN)
_SERIAL = der.implicit(1, der.integer(3), constructed=False)
_ENC_CERT = der.sequence(der.explicit(1, der.sequence()))  # CertifiedKeyPair with encryptedCert


def _ip(cert_response: bytes) -> bytes:
    return _msg(H, der.explicit(1, der.sequence(der.sequence(cert_response))))


def _ir(cert_req_msg: bytes) -> bytes:
    return _msg(H, der.explicit(0, der.sequence(cert_req_msg)))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_msg(H, der.explicit(27, der.NULL_DER)), "unknown PKIBody"),
        (der.sequence(H), "lacks header or body"),
        (_msg(H, der.explicit(19, der.integer(0))), "NULL"),
        (_msg(H, der.explicit(0, der.sequence())), "empty"),
        (
            _msg(
                H,
                der.explicit(19, der.NULL_DER),
                der.explicit(1, der.sequence()),
                der.explicit(0, der.bit_string(b"")),
            ),
            "unexpected field",
        ),
        (
            _msg(H, der.explicit(19, der.NULL_DER), der.explicit(2, der.NULL_DER)),
            "unexpected field",
        ),
        (
            _msg(
                der.sequence(der.integer(2), m.NULL_DN_GENERAL_NAME), der.explicit(19, der.NULL_DER)
            ),
            "lacks",
        ),
        (
            _msg(
                der.sequence(
                    der.integer(2),
                    m.NULL_DN_GENERAL_NAME,
                    m.NULL_DN_GENERAL_NAME,
                    der.explicit(5, der.octet_string(b"n")),
                    der.explicit(4, der.octet_string(b"t")),
                ),
                der.explicit(19, der.NULL_DER),
            ),
            "repeated",
        ),
        (
            _ip(der.sequence(der.integer(0), m.encode_status_info(m.ACCEPTED), _ENC_CERT)),
            "encryptedCert",
        ),
        (_ip(der.sequence(der.integer(0))), "lacks"),
        (_msg(H, der.explicit(11, der.sequence())), "empty"),
        (_msg(H, der.explicit(21, der.sequence(der.sequence()))), "InfoTypeAndValue"),
        (
            _ir(der.sequence(der.sequence(der.integer(0), der.sequence()), b"\x84\x00")),
            "ProofOfPossession",
        ),
        (
            _ir(der.sequence(der.sequence(der.integer(0), der.sequence()), b"\x80\x01\x00")),
            "raVerified",
        ),
        (
            _ir(der.sequence(der.sequence(der.integer(0), der.sequence(_SUBJECT, _SUBJECT)))),
            "repeated",
        ),
        (
            _ir(der.sequence(der.sequence(der.integer(0), der.sequence(_SUBJECT, _SERIAL)))),
            "repeated",
        ),
        (
            _ir(der.sequence(der.sequence(der.integer(0), der.sequence(b"\x8b\x00")))),
            "CertTemplate",
        ),
    ],
)
def test_message_errors(data: bytes, match: str) -> None:
    with pytest.raises(MessageError, match=match):
        m.decode(data)


def test_huge_fail_info_is_cheap() -> None:
    """A 1 MB PKIFailureInfo (8M named bits) decodes in linear time; it once took tens of minutes."""
    status = der.sequence(der.integer(2), der.bit_string(b"\xff" * 1_000_000))
    data = _msg(H, der.explicit(23, der.sequence(status)))
    start = time.perf_counter()
    decoded = m.decode(data)
    assert time.perf_counter() - start < 5
    assert decoded.body.status.fail_info == 2**8_000_000 - 1
    assert "unknownFailInfo" in decoded.body.status.fail_names


def test_size_limit() -> None:
    with pytest.raises(MessageError, match="limit"):
        m.decode(bytes(m.MAX_MESSAGE_BYTES + 1))


def test_errors_are_fleet_errors() -> None:
    assert issubclass(MessageError, FleetError) and issubclass(DerError, FleetError)


# ---------------------------------------------------------------------------------------------
# Helpers


def test_body_labels_and_responses() -> None:
    assert m.BodyType.CERTCONF.label == "certConf"
    assert m.BodyType.P10CR.label == "p10cr"
    assert m.BodyType.IR.label == "ir"
    assert len({b.label for b in m.BodyType}) == len(m.BodyType) == 27
    assert m.RESPONSE_FOR[m.BodyType.P10CR] is m.BodyType.CP


def test_fail_info_names_and_describe() -> None:
    bits = m.FailInfo.badPOP.mask | m.FailInfo.badAlg.mask
    assert m.fail_info_names(bits) == ("badAlg", "badPOP")
    assert m.fail_info_names(None) == () and m.fail_info_names(0) == ()
    assert m.fail_info_names(1 << 30) == ("unknownFailInfo",)
    info = m.PKIStatusInfo(2, ("bad", "worse"), bits)
    assert info.describe() == 'rejection failInfo badAlg,badPOP "bad; worse"'
    assert m.PKIStatusInfo(99).describe() == "status 99"


def test_header_info_and_general_names() -> None:
    decoded = m.decode(IR)
    assert decoded.header.implicit_confirm
    assert decoded.header.info(oids.IT_CERT_PROFILE) is None
    assert decoded.label == "ir"
    assert m.general_name_directory(m.NULL_DN_GENERAL_NAME) == m.NULL_DN
    assert m.general_name_directory(der.tlv(0x82, b"example.com")) is None
    genm = m.GenMsgContent((m.InfoTypeAndValue(oids.IT_CA_CERTS),))
    assert genm.get(oids.IT_CA_CERTS).name == "caCerts" and genm.get(oids.IT_CRLS) is None


@pytest.mark.parametrize("reason", [0, 1, 4, 10])
def test_rev_details_reason(reason: int) -> None:
    details = m.RevDetails(m.CertTemplate(serial=5), S.crl_reason_extensions(reason))
    assert details.reason == reason
    assert m.RevDetails(m.CertTemplate(serial=5)).reason is None


def test_encoder_refuses_incomplete_values() -> None:
    with pytest.raises(ValueError):
        m.encode_popo(m.Popo("signature"))
    with pytest.raises(ValueError):
        m.encode_popo(m.Popo("keyAgreement"))
    with pytest.raises(TypeError):
        m.encode_body_content(m.BodyType.IR, object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Real OpenSSL messages (tests/data/openssl, captured from openssl cmp 3.0)


@pytest.mark.skipif(not OPENSSL_CORPUS, reason="no tests/data/openssl corpus")
@pytest.mark.parametrize("path", OPENSSL_CORPUS, ids=lambda p: p.name)
def test_openssl_corpus_round_trip(path: Path) -> None:
    """``<flow>.<req|rsp><n>.<body>.der``: decodes as that body and re-encodes identically."""
    data = path.read_bytes()
    decoded = m.decode(data)
    assert m.encode(decoded) == data
    assert decoded.label == path.name.split(".")[-2]
    header_der, body_der = (
        m.encode_header(decoded.header),
        m.encode_body(decoded.body_type, decoded.body),
    )
    assert decoded.protected_part == m.protected_part(header_der, body_der)
    if isinstance(decoded.body, m.CertReqMessages):
        for req in decoded.body.messages:  # the POP's input is a slice of what was received
            assert req.cert_request_der in data
