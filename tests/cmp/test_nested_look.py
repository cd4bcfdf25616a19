"""``is_nested``, the look the CA takes at every request, against its reference: the same answer
for every message the decoder reads, and where they differ the decoder refuses the message, so
the CA's answer is the same whichever of the two routed it."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.cmp import messages as m
from fleet.cmp.messages import decoding
from fleet.cmp.nested_server import is_nested, is_nested_reference

from . import strategies as S

OPENSSL_CORPUS = sorted((Path(__file__).parent.parent / "data" / "openssl").glob("*.der"))


@st.composite
def requests(draw) -> bytes:
    """A message of any type, nested ones made likely, maybe mutated."""
    body_type = draw(st.sampled_from([m.BodyType.NESTED, None]))
    data = m.encode(draw(S.pki_messages(body_type)))
    edits = draw(st.integers(0, 3))
    return S.mutate(draw, data, edits, plausible_tlvs=True) if edits else data


def _decodes(data: bytes) -> bool:
    try:
        decoding.decode(data)
    except Exception:  # noqa: BLE001 - any refusal: the server answers it from its decoder
        return False
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_is_nested_is_its_reference_for_every_message_the_decoder_reads(data: bytes) -> None:
    fast, reference = is_nested(data), is_nested_reference(data)
    if fast != reference:
        assert not _decodes(data)
    if _decodes(data):
        assert fast == (decoding.decode(data).body_type is m.BodyType.NESTED)


def test_is_nested_of_the_openssl_corpus_and_of_short_or_odd_input() -> None:
    for path in OPENSSL_CORPUS:
        data = path.read_bytes()
        assert is_nested(data) == is_nested_reference(data) is False, path.name
    for data in (b"", b"\x30", b"\x30\x80", b"\x30\x02\x30\x00", b"\x30\x04\x30\x00\xb4\x00", b"\x30\x84\xff\xff\xff\xff"):
        assert is_nested(data) == is_nested_reference(data) or not _decodes(data), data
    assert is_nested(b"\x30\x04\x30\x00\xb4\x00") is True
