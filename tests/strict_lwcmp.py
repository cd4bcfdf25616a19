"""What a strict RFC 9483 (Lightweight CMP Profile) server checks in a request, written with
pyasn1 and pyasn1-alt-modules (``rfc9480``) and ``cryptography`` only, independently of fleet's
codec: the tests decode the bytes fleet sends with it and list what such a server would refuse.

- header (§3.1): pvno 2 or 3; a directoryName sender; a 128-bit transactionID and senderNonce;
  protectionAlg present.
- MAC protection (§3.1, §4.1.5): a senderKID, and a sender naming the same entity: the Name the
  senderKID spells ("CN=fleet-test", "/CN=x") or, for a plain reference, CN=<senderKID>. The MAC
  itself verifies with ``secret`` when one is given (PasswordBasedMac or PBMAC1).
- signature protection (§3.1, §3.3): extraCerts start with the protection certificate (its
  subject is the sender, its SubjectKeyIdentifier the senderKID), the signature over the
  ProtectedPart verifies with its key, and the chain follows it, each certificate issuing the one
  before, up to a certificate that one of ``anchors`` issued (or that is an anchor).
- rr (§4.2): one RevDetails whose crlEntryDetails hold exactly one extension, a CRLReason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc5280, rfc8018, rfc9480, rfc9481

PBM = str(rfc9481.id_PasswordBasedMac)
PBMAC1 = str(rfc9481.id_PBMAC1)
CRL_REASONS = str(rfc5280.id_ce_cRLReasons)
_HASHES = {
    "1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256", "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512", "1.3.6.1.5.5.8.1.2": "sha1", "1.2.840.113549.2.7": "sha1",
    "1.2.840.113549.2.9": "sha256", "1.2.840.113549.2.10": "sha384", "1.2.840.113549.2.11": "sha512",
}
_SIGNATURES = {
    "1.2.840.10045.4.3.2": hashes.SHA256, "1.2.840.10045.4.3.3": hashes.SHA384, "1.2.840.10045.4.3.4": hashes.SHA512,
    "1.2.840.113549.1.1.11": hashes.SHA256, "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512, "1.3.101.112": None,
}


def decode(data: bytes) -> rfc9480.PKIMessage:
    message, rest = decoder.decode(data, asn1Spec=rfc9480.PKIMessage())
    assert rest == b"", "bytes after the PKIMessage"
    return message


def body_of(message: rfc9480.PKIMessage) -> tuple[str, object]:
    body = message["body"]
    name = body.getName()
    return name, body[name]


def name_attributes(name: rfc5280.Name) -> list[tuple[str, str]]:
    """(OID, text) of every attribute, in order: names compared by value, not by string type."""
    out = []
    for rdn in name["rdnSequence"]:
        for atv in rdn:
            value, _ = decoder.decode(bytes(atv["value"]))
            out.append((str(atv["type"]), str(value)))
    return out


def expected_mac_sender(sender_kid: bytes) -> list[tuple[str, str]]:
    """The sender a strict server accepts for a senderKID: the Name it spells, else CN=<it>."""
    text = sender_kid.decode("utf-8")
    spelled = text
    if text.startswith("/"):
        spelled = ",".join(reversed([p for p in text[1:].split("/") if p]))
    if "=" in spelled:
        try:
            name = x509.Name.from_rfc4514_string(spelled)
            return [(a.oid.dotted_string, str(a.value)) for rdn in name.rdns for a in rdn]
        except ValueError:
            pass
    return [("2.5.4.3", text)]


def _tlvs(data: bytes) -> list[bytes]:
    """The encoded elements inside a DER SEQUENCE (short and long lengths)."""
    def length(at: int) -> tuple[int, int]:
        first = data[at]
        if first < 0x80:
            return first, at + 1
        n = first & 0x7F
        return int.from_bytes(data[at + 1:at + 1 + n], "big"), at + 1 + n

    size, at = length(1)
    end = at + size
    out = []
    while at < end:
        n, start = length(at + 1)
        out.append(data[at:start + n])
        at = start + n
    return out


def protected_part(data: bytes) -> bytes:
    header, body = _tlvs(data)[:2]
    inner = header + body
    n = len(inner)
    head = bytes([0x30, n]) if n < 0x80 else bytes([0x30, 0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return head + inner


def _mac_problems(data: bytes, message: rfc9480.PKIMessage, secret: bytes) -> list[str]:
    alg = message["header"]["protectionAlg"]
    oid = str(alg["algorithm"])
    part = protected_part(data)
    if oid == PBM:
        params, _ = decoder.decode(bytes(alg["parameters"]), asn1Spec=rfc9480.PBMParameter())
        owf = _HASHES[str(params["owf"]["algorithm"])]
        key = bytes(secret) + bytes(params["salt"])
        for _ in range(int(params["iterationCount"])):
            key = hashlib.new(owf, key).digest()
        mac = hmac.digest(key, part, _HASHES[str(params["mac"]["algorithm"])])
    else:
        params, _ = decoder.decode(bytes(alg["parameters"]), asn1Spec=rfc8018.PBMAC1_params())
        kdf, _ = decoder.decode(bytes(params["keyDerivationFunc"]["parameters"]), asn1Spec=rfc8018.PBKDF2_params())
        prf = _HASHES[str(kdf["prf"]["algorithm"])]
        key = hashlib.pbkdf2_hmac(prf, secret, bytes(kdf["salt"]["specified"]), int(kdf["iterationCount"]),
                                  int(kdf["keyLength"]))
        mac = hmac.digest(key, part, _HASHES[str(params["messageAuthScheme"]["algorithm"])])
    return [] if hmac.compare_digest(mac, message["protection"].asOctets()) else ["MAC does not verify"]


def _signature_problems(data: bytes, message: rfc9480.PKIMessage, anchors: Sequence[x509.Certificate]) -> list[str]:
    h = message["header"]
    extra = [x509.load_der_x509_certificate(encoder.encode(c)) for c in message["extraCerts"]] \
        if message["extraCerts"].isValue else []
    if not extra:
        return ["signed message without extraCerts"]
    problems = []
    signer = extra[0]
    if name_attributes(h["sender"]["directoryName"]) != [
        (a.oid.dotted_string, str(a.value)) for rdn in signer.subject.rdns for a in rdn
    ]:
        problems.append("sender is not the subject of the first extraCerts certificate")
    try:
        ski = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        if not h["senderKID"].isValue or bytes(h["senderKID"]) != ski:
            problems.append("senderKID is not the protection certificate's SubjectKeyIdentifier")
    except x509.ExtensionNotFound:
        pass
    key = signer.public_key()
    hash_cls = _SIGNATURES[str(h["protectionAlg"]["algorithm"])]
    signature = message["protection"].asOctets()
    part = protected_part(data)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, part, ec.ECDSA(hash_cls()))  # type: ignore[misc]
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, part, padding.PKCS1v15(), hash_cls())  # type: ignore[misc]
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, part)
    except InvalidSignature:
        problems.append("signature does not verify with the first extraCerts certificate")
    # The chain: each next certificate issues the current one, until an anchor issued one.
    current, rest = signer, extra[1:]
    for _ in range(len(extra)):
        if any(current == a or _issued(current, a) for a in anchors):
            break
        parent = next((c for c in rest if _issued(current, c)), None)
        if parent is None:
            problems.append(f"the certificate chain was not present: no issuer of {current.subject.rfc4514_string()!r}")
            break
        current = parent
    return problems


def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _rr_problems(rr: rfc9480.RevReqContent) -> list[str]:
    if len(rr) != 1:
        return [f"rr holds {len(rr)} RevDetails, not 1"]
    details = rr[0]
    if not details["crlEntryDetails"].isValue:
        return ["rr without crlEntryDetails: no CRLReason"]
    extensions = list(details["crlEntryDetails"])
    reasons = [e for e in extensions if str(e["extnID"]) == CRL_REASONS]
    if len(extensions) != 1 or len(reasons) != 1:
        return [f"crlEntryDetails must hold exactly one CRLReason, not {len(extensions)} extensions"]
    reason, rest = decoder.decode(bytes(reasons[0]["extnValue"]), asn1Spec=rfc5280.CRLReason())
    if rest or int(reason) not in (0, 1, 2, 3, 4, 5, 6, 8, 9, 10):
        return ["crlEntryDetails holds no valid CRLReason"]
    return []


def problems(data: bytes, *, anchors: Sequence[x509.Certificate] = (), secret: bytes | None = None) -> list[str]:
    """Every reason a strict RFC 9483 server would refuse the request ``data`` (empty: none)."""
    message = decode(data)
    h = message["header"]
    found = []
    if int(h["pvno"]) not in (2, 3):
        found.append(f"pvno {int(h['pvno'])}")
    if h["sender"].getName() != "directoryName":
        return found + ["sender is not a directoryName"]
    for field in ("transactionID", "senderNonce"):
        if not h[field].isValue or len(bytes(h[field])) != 16:
            found.append(f"{field} is not 128 bits")
    if not h["protectionAlg"].isValue or not message["protection"].isValue:
        return found + ["not protected"]
    if str(h["protectionAlg"]["algorithm"]) in (PBM, PBMAC1):
        if not h["senderKID"].isValue:
            found.append("MAC protection without senderKID")
        elif name_attributes(h["sender"]["directoryName"]) != expected_mac_sender(bytes(h["senderKID"])):
            found.append("MAC protection: sender does not name the senderKID's entity")
        if secret is not None:
            found += _mac_problems(data, message, secret)
    else:
        found += _signature_problems(data, message, anchors)
    kind, body = body_of(message)
    if kind == "rr":
        found += _rr_problems(body)  # type: ignore[arg-type]
    return found


def sender_attributes(data: bytes) -> list[tuple[str, str]]:
    return name_attributes(decode(data)["header"]["sender"]["directoryName"])


def extra_cert_subjects(data: bytes) -> list[str]:
    message = decode(data)
    if not message["extraCerts"].isValue:
        return []
    return [x509.load_der_x509_certificate(encoder.encode(c)).subject.rfc4514_string()
            for c in message["extraCerts"]]


def crl_reasons(data: bytes) -> list[int]:
    """The CRLReason codes of an rr's crlEntryDetails (empty when there are none)."""
    kind, body = body_of(decode(data))
    assert kind == "rr"
    out = []
    for details in body:  # type: ignore[attr-defined]
        if details["crlEntryDetails"].isValue:
            for e in details["crlEntryDetails"]:
                if str(e["extnID"]) == CRL_REASONS:
                    out.append(int(decoder.decode(bytes(e["extnValue"]), asn1Spec=rfc5280.CRLReason())[0]))
    return out
