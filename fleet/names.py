"""Parse the subject names and SANs users type: OpenSSL's ``/CN=a/O=b`` or RFC 4514 ``CN=a,O=b``;
SANs as ``DNS:host``, ``IP:addr``, ``URI:urn:uuid:...``, ``email:a@b`` (or bare values, guessed)."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.errors import FleetError


class NameError_(FleetError):
    """A subject or SAN that cannot be parsed."""


_ATTRS = {
    "CN": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "TITLE": NameOID.TITLE,
}


def parse_name(text: str) -> x509.Name:
    """``/CN=a/O=b`` (OpenSSL order: most significant first) or ``CN=a,O=b`` (RFC 4514)."""
    text = text.strip()
    if not text or text == "/":
        return x509.Name([])
    if not text.startswith("/"):
        try:
            return x509.Name.from_rfc4514_string(text)
        except ValueError as exc:
            raise NameError_(f"cannot parse name {text!r}: {exc}") from None
    attrs = []
    for part in filter(None, text[1:].split("/")):
        key, sep, value = part.partition("=")
        oid = _ATTRS.get(key.strip().upper())
        if not sep or oid is None:
            raise NameError_(f"cannot parse name component {part!r} in {text!r} (known: {', '.join(_ATTRS)})")
        try:
            attrs.append(x509.NameAttribute(oid, value))
        except ValueError as exc:
            raise NameError_(f"bad value for {key} in {text!r}: {exc}") from None
    return x509.Name(attrs)


def parse_san(text: str) -> x509.GeneralName:
    kind, sep, value = text.strip().partition(":")
    if sep and kind.upper() in ("DNS", "IP", "URI", "EMAIL"):
        kind = kind.upper()
    else:
        value = text.strip()
        try:
            ipaddress.ip_address(value)
            kind = "IP"
        except ValueError:
            kind = "URI" if ":" in value else "EMAIL" if "@" in value else "DNS"
    try:
        if kind == "DNS":
            return x509.DNSName(value)
        if kind == "IP":
            return x509.IPAddress(ipaddress.ip_address(value))
        if kind == "URI":
            return x509.UniformResourceIdentifier(value)
        return x509.RFC822Name(value)
    except ValueError as exc:
        raise NameError_(f"bad subjectAltName {text!r}: {exc}") from None


def parse_sans(text: str | None) -> list[x509.GeneralName]:
    """Comma- or space-separated SANs."""
    if not text:
        return []
    return [parse_san(p) for p in text.replace(",", " ").split()]
