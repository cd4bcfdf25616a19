"""RFC 4514 text of a Name read straight from its DER, for the shapes devices usually send.

``simple_rfc4514`` gives what ``x509.Name.rfc4514_string()`` gives, without making the Python
``Name`` objects only to print them (which cost more than the rest of recording a certificate).
It declines (returns None) anything outside the simple shape, and the caller asks cryptography:
a Hypothesis test checks it against cryptography on random names.
"""

from __future__ import annotations

__all__ = ["simple_rfc4514"]

#: Attribute types RFC 4514 strings name by a short name (cryptography's table), by OID DER.
_SHORT_NAMES = {
    b"\x06\x03\x55\x04\x03": "CN",
    b"\x06\x03\x55\x04\x07": "L",
    b"\x06\x03\x55\x04\x08": "ST",
    b"\x06\x03\x55\x04\x0a": "O",
    b"\x06\x03\x55\x04\x0b": "OU",
    b"\x06\x03\x55\x04\x06": "C",
    b"\x06\x03\x55\x04\x09": "STREET",
    b"\x06\x0a\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x19": "DC",
    b"\x06\x0a\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x01": "UID",
}
#: String types whose text is the value's octets as UTF-8 (PrintableString and IA5String are
#: ASCII, a subset).
_TEXT_TYPES = frozenset((0x0C, 0x13, 0x16))
#: PrintableString's characters (X.680 §41.4).
_PRINTABLE = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)
#: Characters RFC 4514 (and cryptography's rfc4514_string) would escape anywhere in a value.
_ESCAPED = frozenset('\\"+,;<>\0')


def simple_rfc4514(name_der: bytes) -> str | None:
    """``x509.Name.rfc4514_string()`` read straight from the Name's DER, for the usual shape
    (one attribute per RDN, a short-named type, a UTF8/Printable/IA5 string needing no
    escapes); None for anything else, and the caller asks cryptography."""
    if (
        len(name_der) < 2
        or name_der[0] != 0x30
        or name_der[1] >= 0x80
        or len(name_der) != name_der[1] + 2
    ):
        return None  # also every name longer than 127 octets
    parts: list[str] = []
    pos, end = 2, len(name_der)
    while pos < end:
        # SET (short form) { SEQUENCE (short form) { OID, string } }, exactly one attribute.
        if end - pos < 6 or name_der[pos] != 0x31 or name_der[pos + 2] != 0x30:
            return None
        set_end = pos + 2 + name_der[pos + 1]
        seq_end = pos + 4 + name_der[pos + 3]
        if (
            seq_end != set_end
            or set_end > end
            or name_der[pos + 1] >= 0x80
            or name_der[pos + 3] >= 0x80
        ):
            return None
        oid_len = name_der[pos + 5] + 2
        short = _SHORT_NAMES.get(name_der[pos + 4 : pos + 4 + oid_len])
        value_at = pos + 4 + oid_len
        if short is None or value_at + 2 > seq_end or name_der[value_at] not in _TEXT_TYPES:
            return None
        if name_der[value_at + 1] >= 0x80 or value_at + 2 + name_der[value_at + 1] != seq_end:
            return None
        value = name_der[value_at + 2 : seq_end]
        kind = name_der[value_at]
        if kind == 0x13:
            if not _PRINTABLE.issuperset(value):
                return None  # not a PrintableString: cryptography's parser decides
        elif kind == 0x16 and not value.isascii():
            return None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not text or text[0] in "# " or text[-1] == " " or not _ESCAPED.isdisjoint(text):
            return None
        parts.append(f"{short}={text}")
        pos = set_end
    return ",".join(reversed(parts))
