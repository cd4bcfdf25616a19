"""Parse the subject names and SANs users type: OpenSSL's ``/CN=a/O=b`` or RFC 4514 ``CN=a,O=b``;
SANs as ``DNS:host``, ``IP:addr``, ``URI:urn:uuid:...``, ``email:a@b``, ``RID:1.2.3`` (or bare host
names, addresses and emails). This is the one SAN parser: ``fleet cmp --sans``, manifests and profile
templates all go through ``parse_san``."""

from __future__ import annotations

import difflib
import ipaddress
import re

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.errors import FleetError


class NameSyntaxError(FleetError):
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
            raise NameSyntaxError(f"cannot parse name {text!r}: {exc}") from None
    attrs = []
    for part in filter(None, text[1:].split("/")):
        key, sep, value = part.partition("=")
        oid = _ATTRS.get(key.strip().upper())
        if not sep or oid is None:
            raise NameSyntaxError(f"cannot parse name component {part!r} in {text!r} (known: {', '.join(_ATTRS)})")
        try:
            attrs.append(x509.NameAttribute(oid, value))
        except ValueError as exc:
            raise NameSyntaxError(f"bad value for {key} in {text!r}: {exc}") from None
    return x509.Name(attrs)


# The SAN kinds fleet accepts, by the prefix users type (OpenSSL's config names), case-insensitive.
SAN_PREFIXES = ("DNS", "IP", "URI", "email", "RID")
_PREFIX = {p.upper(): p for p in SAN_PREFIXES}
_ALLOWED = ", ".join(f"{p}:" for p in SAN_PREFIXES)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_URI_SCHEMES = frozenset({"urn", "http", "https", "ldap", "sip", "sips", "tel", "mailto", "coap", "coaps"})
_TEMPLATE_FIELD = re.compile(r"\{[^{}]*\}")


def _check_hostname(value: str, what: str) -> None:
    """A plausible DNS name (RFC 1123 labels, an optional leading ``*.``), ASCII only."""
    if not value.isascii():
        raise ValueError(f"{what} must be ASCII: write internationalized names as A-labels (xn--...)")
    host = value.removesuffix(".").removeprefix("*.")
    if not host or len(host) > 253:
        raise ValueError(f"{what} must be 1-253 characters")
    labels = host.split(".")
    bad = next((label for label in labels if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        raise ValueError(f"{what} label {bad!r} must be 1-63 letters, digits, '-' or '_', not starting or ending with '-'")
    if labels[-1].isdigit():
        raise ValueError(f"{what} ends in a number: for an address use IP:")


def _san_value(kind: str, value: str) -> x509.GeneralName:
    """The GeneralName for an explicit ``kind`` (a key of ``_PREFIX``); ValueError says why not."""
    if not value:
        raise ValueError("empty value")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("spaces and control characters are not allowed")
    if kind == "DNS":
        _check_hostname(value, "DNS name")
        return x509.DNSName(value)
    if kind == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None
    if kind == "URI":
        scheme, sep, rest = value.partition(":")
        if not sep or not _SCHEME.fullmatch(scheme) or not rest:
            raise ValueError("a URI needs a scheme, e.g. URI:urn:uuid:... or URI:https://host/")
        if not value.isascii():
            raise ValueError("a URI must be ASCII (percent-encode other characters)")
        return x509.UniformResourceIdentifier(value)
    if kind == "EMAIL":
        local, sep, domain = value.rpartition("@")
        if not sep or not local or not local.isascii() or "@" in local:
            raise ValueError("an email address is local-part@domain, ASCII")
        _check_hostname(domain, "email domain")
        return x509.RFC822Name(value)
    assert kind == "RID"
    if not re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*))+", value):
        raise ValueError("a registeredID is a dotted OID such as 1.3.6.1.4.1.99999.1")
    try:
        return x509.RegisteredID(x509.ObjectIdentifier(value))
    except ValueError:
        raise ValueError("not a valid OID") from None


def _hint(kind: str, text: str) -> str:
    """A suggestion for an unknown SAN type: the prefix it resembles, or URI: for a URI scheme."""
    if kind.lower() in _URI_SCHEMES:
        return f"; for a URI write 'URI:{text}'"
    close = difflib.get_close_matches(kind.upper(), list(_PREFIX), n=1, cutoff=0.6)
    return f"; did you mean {_PREFIX[close[0]]}:?" if close else ""


def parse_san(text: str) -> x509.GeneralName:
    """One SAN: ``KIND:value`` with KIND one of ``SAN_PREFIXES``, or a bare host name, IP address
    or email address (guessed, as ``openssl cmp -sans`` does). Anything else with a ``:`` is
    refused rather than guessed to be a URI: a typo such as ``DSN:host`` must not end up in a
    certificate as ``URI:DSN:host``."""
    text = text.strip()
    kind, sep, value = text.partition(":")
    if sep and kind.upper() in _PREFIX:
        kind = kind.upper()
    else:
        value = text
        try:
            ipaddress.ip_address(value)
            kind = "IP"
        except ValueError:
            if sep:
                raise NameSyntaxError(f"subjectAltName {text!r}: unknown type {kind!r}{_hint(kind, text)} "
                                 f"(allowed: {_ALLOWED} or a bare host name, IP address or email)") from None
            kind = "EMAIL" if "@" in value else "DNS"
    try:
        return _san_value(kind, value)
    except ValueError as exc:
        raise NameSyntaxError(f"bad subjectAltName {text!r}: {exc}") from None


def parse_sans(text: str | None) -> list[x509.GeneralName]:
    """Comma- or space-separated SANs."""
    if not text:
        return []
    return [parse_san(p) for p in text.replace(",", " ").split()]


def check_san_template(template: str) -> None:
    """Check a SAN template with ``{field}`` placeholders (profiles) before any device exists:
    the type must be known and the value, with each field replaced by a plain ``0``, valid.
    The devices' own values are checked again once filled in."""
    parse_san(_TEMPLATE_FIELD.sub("0", template))
