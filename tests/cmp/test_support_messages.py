"""Support messages (RFC 9483 §4.3, RFC 9810 §5.3.19) of the embedded CA, asked for with genm
messages written by pyasn1-alt-modules: key pair types for encryption and key agreement, the
preferred symmetric algorithm, language tags, and the refusals of infoValues of the wrong form."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, univ
from pyasn1_alt_modules import rfc5280

from fleet.ca.authority import Authority
from fleet.cmp.server import CmpServer

from . import pyasn1_requests as P
from .test_server_auth import REF, REJECTION, SECRET, make_server

IT = "1.3.6.1.5.5.7.4."
CA_PROT_ENC_CERT, SIGN_KEY_PAIR_TYPES, ENC_KEY_PAIR_TYPES, PREFERRED_SYMM_ALG = (IT + n for n in "1234")
CURRENT_CRL, SUPP_LANG_TAGS, CA_CERTS, CERT_REQ_TEMPLATE = IT + "6", IT + "16", IT + "17", IT + "19"


@pytest.fixture
def server(tmp_path: Path):
    authority = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield make_server(authority)
    authority.close()


def genm(server: CmpServer, *items: tuple[str, bytes | None]) -> bytes:
    msg = P.new_message("genm")
    for info_type, value in items:
        P.genm_item(msg, info_type, value)
    return server.handle(P.protect(msg, P.Mac(SECRET, REF)), time.time()).data


def tags(*values: str) -> bytes:
    seq = univ.SequenceOf(componentType=char.UTF8String())
    for value in values:
        seq.append(char.UTF8String(value))
    return encoder.encode(seq)


def algorithms(value: bytes) -> list[tuple[str, bytes | None]]:
    seq, rest = decoder.decode(value, asn1Spec=univ.SequenceOf(componentType=rfc5280.AlgorithmIdentifier()))
    assert rest == b""
    return [(str(a["algorithm"]), bytes(a["parameters"]) if a["parameters"].isValue else None) for a in seq]


def test_enc_key_pair_types(server: CmpServer) -> None:
    ((info_type, value),) = P.genp_items(genm(server, (ENC_KEY_PAIR_TYPES, None)))
    assert info_type == ENC_KEY_PAIR_TYPES and value is not None
    found = algorithms(value)
    assert ("1.3.101.110", None) in found  # X25519
    assert ("1.3.101.111", None) in found  # X448
    ec_curves = {decoder.decode(p, asn1Spec=univ.ObjectIdentifier())[0] for a, p in found if a == "1.2.840.10045.2.1"}
    assert {str(c) for c in ec_curves} == {"1.2.840.10045.3.1.7", "1.3.132.0.34"}
    assert any(a == "1.2.840.113549.1.1.1" for a, _ in found)  # rsaEncryption (key transport)


def test_preferred_symmetric_algorithm(server: CmpServer) -> None:
    ((info_type, value),) = P.genp_items(genm(server, (PREFERRED_SYMM_ALG, None)))
    assert info_type == PREFERRED_SYMM_ALG and value is not None
    alg, rest = decoder.decode(value, asn1Spec=rfc5280.AlgorithmIdentifier())
    assert rest == b"" and str(alg["algorithm"]) == "2.16.840.1.101.3.4.1.42"  # aes256-CBC


def test_several_items_in_one_genm(server: CmpServer) -> None:
    items = P.genp_items(genm(server, (SIGN_KEY_PAIR_TYPES, None), (ENC_KEY_PAIR_TYPES, None), (CA_CERTS, None)))
    assert [t for t, _ in items] == [SIGN_KEY_PAIR_TYPES, ENC_KEY_PAIR_TYPES, CA_CERTS]
    assert all(v is not None for _, v in items)


@pytest.mark.parametrize("offered", [("en",), ("de", "fr", "en"), ("de", "en-US")])
def test_supported_language_tags_answer_exactly_one(server: CmpServer, offered: tuple[str, ...]) -> None:
    ((info_type, value),) = P.genp_items(genm(server, (SUPP_LANG_TAGS, tags(*offered))))
    assert info_type == SUPP_LANG_TAGS and value is not None
    chosen, rest = decoder.decode(value, asn1Spec=univ.SequenceOf(componentType=char.UTF8String()))
    assert rest == b"" and len(chosen) == 1
    assert str(chosen[0]) in offered and str(chosen[0]).startswith("en")


def _refusal(data: bytes) -> tuple[str, int | None, tuple[str, ...]]:
    answer = P.Answer.read(data)
    return answer.body, answer.status, answer.fail


@pytest.mark.parametrize("info_type", [
    CA_PROT_ENC_CERT, SIGN_KEY_PAIR_TYPES, ENC_KEY_PAIR_TYPES, PREFERRED_SYMM_ALG, CURRENT_CRL, CA_CERTS,
    CERT_REQ_TEMPLATE,
])
def test_a_value_where_none_belongs_is_bad_request(server: CmpServer, info_type: str) -> None:
    assert _refusal(genm(server, (info_type, encoder.encode(univ.OctetString(b"junk"))))) == (
        "error", REJECTION, ("badRequest",))


@pytest.mark.parametrize(("value", "fail"), [
    (None, "badRequest"),  # no tag offered
    (tags(), "badRequest"),  # an empty list
    (tags("xx", "tlh"), "badRequest"),  # none supported
    (encoder.encode(univ.Integer(5)), "badDataFormat"),  # not a list of tags
])
def test_language_tag_refusals(server: CmpServer, value: bytes | None, fail: str) -> None:
    assert _refusal(genm(server, (SUPP_LANG_TAGS, value))) == ("error", REJECTION, (fail,))


def test_a_refused_item_refuses_the_genm(server: CmpServer) -> None:
    data = genm(server, (CA_CERTS, None), (PREFERRED_SYMM_ALG, encoder.encode(univ.Null(""))))
    assert _refusal(data) == ("error", REJECTION, ("badRequest",))
