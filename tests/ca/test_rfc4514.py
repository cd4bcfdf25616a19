"""``simple_rfc4514``: cryptography's RFC 4514 text of a Name, read from its DER, or None."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings

from fleet.ca.issuance import _parse_name
from fleet.ca.rfc4514 import simple_rfc4514

from .conftest import device_name
from .pki_helpers import names as _names


@settings(max_examples=500, deadline=None)
@given(name=_names())
def test_simple_rfc4514_is_cryptographys_string_or_declines(name: x509.Name) -> None:
    der_bytes = name.public_bytes()
    fast = simple_rfc4514(der_bytes)
    if fast is not None:
        assert fast == name.rfc4514_string()
        # ... and what a parser of the DER (as the certificate carries it) says
        parsed = _parse_name(der_bytes)
        assert fast == parsed.rfc4514_string()


def test_simple_rfc4514_common_shapes() -> None:
    assert simple_rfc4514(device_name("dev-42").public_bytes()) == "CN=dev-42"
    assert simple_rfc4514(x509.Name([]).public_bytes()) == ""
    two = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(NameOID.COMMON_NAME, "d"),
        ]
    )
    assert simple_rfc4514(two.public_bytes()) == "CN=d,O=Acme" == two.rfc4514_string()
    assert (
        simple_rfc4514(device_name("a,b").public_bytes()) is None
    )  # needs an escape: cryptography's job
    long_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * 60)] * 3)
    assert simple_rfc4514(long_name.public_bytes()) is None  # long-form lengths
    assert simple_rfc4514(b"\x30\x05\x31\x03\x30\x01\x06") is None  # truncated
