"""CMP requests built and protected with pyasn1 and pyasn1-alt-modules, not with fleet's encoder.

The authentication tests of the CA send what an independent implementation writes, field by
field, so a hole cannot hide behind fleet's client and server sharing one codec. Protection is
computed here too: ECDSA/SHA-256 over pyasn1's ``ProtectedPart``, or PasswordBasedMac (RFC 4210
§5.1.3.1, SHA-256 and HMAC-SHA256) written out with hashlib. Responses are read back with pyasn1
(``Answer``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc9480

ECDSA_SHA256 = "1.2.840.10045.4.3.2"
PASSWORD_BASED_MAC = "1.2.840.113533.7.66.13"
SHA256 = "2.16.840.1.101.3.4.2.1"
HMAC_SHA256 = "1.2.840.113549.2.9"
CRL_REASON = "2.5.29.21"
IT_CA_CERTS = "1.3.6.1.5.5.7.4.17"
_DER = serialization.Encoding.DER


def _decode(data: bytes, spec):
    obj, rest = decoder.decode(data, asn1Spec=spec)
    assert rest == b""
    return obj


def _component(parent, name: str):
    """A fresh value of ``parent[name]``'s own (tagged) type."""
    types = parent.componentType
    return types[types.getPositionByName(name)].asn1Object.clone()


def _tagged(parent, name: str, inner_der: bytes, tag: int):
    """``parent[name]`` (explicitly tagged [tag]) decoded from the DER of its untagged value."""
    length = len(inner_der)
    head = bytes((0xA0 | tag,)) + (bytes((length,)) if length < 0x80 else b"\x82" + length.to_bytes(2, "big"))
    return _decode(head + inner_der, _component(parent, name))


def _append(seq_of):
    seq_of.append(seq_of.componentType.clone())
    return seq_of[len(seq_of) - 1]


def set_name(holder, name: x509.Name | bytes) -> None:
    """Fill a Name CHOICE (``holder``) from a cryptography Name or its DER."""
    der_bytes = name if isinstance(name, bytes) else name.public_bytes()
    holder["rdnSequence"] = _decode(der_bytes, rfc5280.Name())["rdnSequence"]


def _spki_into(target, public_key) -> None:
    spki = _decode(
        public_key.public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        rfc5280.SubjectPublicKeyInfo(),
    )
    for key in spki:
        target[key] = spki[key]


# ---------------------------------------------------------------------------------------------
# Bodies: each function fills ``msg["body"]`` and returns nothing


def cert_request(msg, kind: str, key: ec.EllipticCurvePrivateKey, subject: x509.Name | None, *,
                 cert_req_id: int = 0, extensions: tuple[x509.ExtensionType, ...] = ()) -> None:
    """ir, cr or kur: one CertReqMsg for ``key`` with a signature POP (and the requested
    ``extensions``, non-critical)."""
    body = msg["body"][kind]
    crm = _append(body)
    crm["certReq"]["certReqId"] = cert_req_id
    template = crm["certReq"]["certTemplate"]
    if subject is not None:
        set_name(template["subject"], subject)
    _spki_into(template["publicKey"], key.public_key())
    for value in extensions:
        ext = _append(template["extensions"])
        ext["extnID"] = univ.ObjectIdentifier(value.oid.dotted_string)
        ext["extnValue"] = value.public_bytes()
    signature = crm["popo"]["signature"]
    signature["algorithmIdentifier"]["algorithm"] = univ.ObjectIdentifier(ECDSA_SHA256)
    pop = key.sign(encoder.encode(crm["certReq"]), ec.ECDSA(hashes.SHA256()))
    signature["signature"] = univ.BitString(hexValue=pop.hex())


def cert_request_pop(msg, kind: str, public_key, subject: x509.Name | None, popo: str, *,
                     method: str = "subsequentMessage", value: int = 0,
                     extensions: tuple[x509.ExtensionType, ...] = (), critical: bool = True) -> None:
    """ir, cr or kur for a key proven without a signature: ``popo`` is "raVerified",
    "signature" (a dummy one),
    "keyEncipherment" or "keyAgreement"; for the last two a POPOPrivKey of ``method``
    (subsequentMessage with ``value`` 0 encrCert, 1 challengeResp; or thisMessage, dhMAC,
    agreeMAC with dummy contents). ``extensions`` are requested ``critical``."""
    crm = _append(msg["body"][kind])
    crm["certReq"]["certReqId"] = 0
    template = crm["certReq"]["certTemplate"]
    if subject is not None:
        set_name(template["subject"], subject)
    _spki_into(template["publicKey"], public_key)
    for ext_value in extensions:
        ext = _append(template["extensions"])
        ext["extnID"] = univ.ObjectIdentifier(ext_value.oid.dotted_string)
        ext["critical"] = critical
        ext["extnValue"] = ext_value.public_bytes()
    pop = crm["popo"]
    if popo == "raVerified":
        pop["raVerified"] = _component(pop, "raVerified").clone("")
        return
    if popo == "signature":  # a signature the key could not have made (it cannot sign)
        pop["signature"]["algorithmIdentifier"]["algorithm"] = univ.ObjectIdentifier(ECDSA_SHA256)
        pop["signature"]["signature"] = univ.BitString(hexValue="00")
        return
    priv = pop[popo]
    if method == "subsequentMessage":
        priv["subsequentMessage"] = value
    elif method in ("thisMessage", "dhMAC"):
        priv[method] = _component(priv, method).clone(hexValue="00")
    else:  # agreeMAC
        mac = priv["agreeMAC"]
        mac["algId"]["algorithm"] = univ.ObjectIdentifier(HMAC_SHA256)
        mac["value"] = univ.BitString(hexValue="00" * 32)


def ccr(msg, key, subject: x509.Name, issuer: x509.Name, *, version: int | None = 2,
        validity: tuple[datetime, datetime] | None = None, leave_out: tuple[str, ...] = (),
        popo: str | None = "signature") -> None:
    """A ccr (RFC 9810 Appendix D.6): certTemplate with version, signingAlg, issuer, validity,
    subject and publicKey (``leave_out`` names the ones to omit), and a signature POP by ``key``
    (``popo`` None: no POP, "raVerified": that)."""
    crm = _append(msg["body"]["ccr"])
    crm["certReq"]["certReqId"] = 0
    template = crm["certReq"]["certTemplate"]
    if version is not None and "version" not in leave_out:
        template["version"] = version
    if "signingAlg" not in leave_out:
        template["signingAlg"]["algorithm"] = univ.ObjectIdentifier(ECDSA_SHA256)
    if "issuer" not in leave_out:
        set_name(template["issuer"], issuer)
    if "validity" not in leave_out:
        now = datetime.now(UTC)
        start, end = validity or (now, now.replace(year=now.year + 1))
        for field_name, when in (("notBefore", start), ("notAfter", end)):
            time_value = template["validity"][field_name]
            time_value["generalTime"] = time_value["generalTime"].clone(when.strftime("%Y%m%d%H%M%SZ"))
    if "subject" not in leave_out:
        set_name(template["subject"], subject)
    if "publicKey" not in leave_out:
        _spki_into(template["publicKey"], key.public_key())
    pop = crm["popo"]
    if popo == "raVerified":
        pop["raVerified"] = _component(pop, "raVerified").clone("")
    elif popo == "signature":
        pop["signature"]["algorithmIdentifier"]["algorithm"] = univ.ObjectIdentifier(ECDSA_SHA256)
        signature = (key.sign(encoder.encode(crm["certReq"]), ec.ECDSA(hashes.SHA256()))
                     if isinstance(key, ec.EllipticCurvePrivateKey) else b"\x00")  # others cannot sign here
        pop["signature"]["signature"] = univ.BitString(hexValue=signature.hex())


def p10cr(msg, csr: x509.CertificateSigningRequest) -> None:
    msg["body"]["p10cr"] = _tagged(msg["body"], "p10cr", csr.public_bytes(_DER), 4)


def crl_reason(code: int) -> tuple[str, bytes]:
    return CRL_REASON, encoder.encode(rfc5280.CRLReason(code))


def rr(msg, issuer: x509.Name | None, serial: int | None, *, reasons: tuple[int, ...] = (1,),
       subject: x509.Name | None = None, public_key=None) -> None:
    """One RevDetails naming issuer and serial (each may be left out), optionally subject and
    publicKey too, with one CRLReason extension per entry of ``reasons``."""
    details = _append(msg["body"]["rr"])
    template = details["certDetails"]
    if issuer is not None:
        set_name(template["issuer"], issuer)
    if serial is not None:
        template["serialNumber"] = serial
    if subject is not None:
        set_name(template["subject"], subject)
    if public_key is not None:
        _spki_into(template["publicKey"], public_key)
    for code in reasons:
        ext = _append(details["crlEntryDetails"])
        ext["extnID"], ext["extnValue"] = crl_reason(code)


def genm(msg) -> None:
    _append(msg["body"]["genm"])["infoType"] = univ.ObjectIdentifier(IT_CA_CERTS)


def genm_item(msg, info_type: str, value: bytes | None = None) -> None:
    """One InfoTypeAndValue of ``info_type``, its infoValue the DER ``value`` (absent: None)."""
    item = _append(msg["body"]["genm"])
    item["infoType"] = univ.ObjectIdentifier(info_type)
    if value is not None:
        item["infoValue"] = univ.Any(value)


def genp_items(data: bytes) -> list[tuple[str, bytes | None]]:
    """The (infoType, infoValue DER or None) pairs of a genp, read with pyasn1."""
    msg = _decode(data, rfc9480.PKIMessage())
    assert msg["body"].getName() == "genp"
    return [(str(item["infoType"]), bytes(item["infoValue"]) if item["infoValue"].isValue else None)
            for item in msg["body"]["genp"]]


def cert_conf(msg, cert_der: bytes, cert_req_id: int = 0, *, status: int | None = None,
              fail: tuple[str, ...] = ()) -> None:
    """One CertStatus; ``status`` (and ``fail``, failInfo bit names) fill its statusInfo."""
    entry = _append(msg["body"]["certConf"])
    entry["certHash"] = hashlib.sha256(cert_der).digest()
    entry["certReqId"] = cert_req_id
    if status is not None:
        info = entry["statusInfo"]
        info["status"] = status
        if fail:
            info["failInfo"] = fail_bits(fail)


def fail_bits(names: tuple[str, ...]) -> univ.BitString:
    """A PKIFailureInfo with the named bits set."""
    last = max(_FAIL_BITS.index(n) for n in names)
    bits = "".join("1" if _FAIL_BITS[i] in names else "0" for i in range(last + 1))
    return rfc9480.PKIFailureInfo(binValue=bits)


def poll_req(msg, cert_req_id: int = 0) -> None:
    _append(msg["body"]["pollReq"])["certReqId"] = cert_req_id


def error(msg) -> None:
    info = msg["body"]["error"]["pKIStatusInfo"]
    info["status"] = 2
    info["statusString"].append("giving up")


# ---------------------------------------------------------------------------------------------
# Headers and protection


@dataclass
class Signed:
    """Signature protection by ``cert``/``key``; ``extra`` follows the certificate in extraCerts."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    extra: tuple[bytes, ...] = ()
    extra_certs_override: tuple[bytes, ...] | None = None  # send these instead (malformed signers)

    @property
    def ski(self) -> bytes | None:
        try:
            return self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return None


@dataclass
class Mac:
    """PasswordBasedMac with SHA-256 and HMAC-SHA256, 500 iterations."""

    secret: bytes
    reference: bytes | None
    salt: bytes = field(default_factory=lambda: os.urandom(16))
    iterations: int = 500

    def key(self) -> bytes:
        digest = hashlib.sha256(self.secret + self.salt).digest()
        for _ in range(self.iterations - 1):
            digest = hashlib.sha256(digest).digest()
        return digest


@dataclass
class Header:
    """Header fields; ``sender`` is a Name (directoryName), the DER of any GeneralName, or None
    for the signer's subject (signed) / NULL-DN (MAC). ``sender_kid`` "auto" is the SKI or the
    MAC reference."""

    sender: x509.Name | bytes | None = None
    sender_kid: bytes | None | str = "auto"
    transaction_id: bytes = field(default_factory=lambda: os.urandom(16))
    sender_nonce: bytes = field(default_factory=lambda: os.urandom(16))
    recip_nonce: bytes | None = None
    # For the header checks (tests/cmp/test_refusals.py): transaction_id b"" leaves it out
    pvno: int = 2
    message_time: bool = True  # False: no messageTime
    general_info: tuple[tuple[str, bytes | None], ...] = ()  # (infoType, DER of infoValue or None)
    protection_oid: str | None = None  # protectionAlg's OID instead of the real one (signed messages)


def new_message(body: str):
    msg = rfc9480.PKIMessage()
    msg["body"][body]  # selects the CHOICE alternative
    return msg


def protect(msg, protection: Signed | Mac, header: Header | None = None) -> bytes:
    """Fill the header, protect ``msg`` and return its DER."""
    header = header or Header()
    h = msg["header"]
    h["pvno"] = header.pvno
    sender = header.sender
    if isinstance(sender, bytes):
        h["sender"] = _decode(sender, rfc5280.GeneralName())
    else:
        if sender is None:
            sender = protection.cert.subject if isinstance(protection, Signed) else x509.Name([])
        set_name(h["sender"]["directoryName"], sender)
    set_name(h["recipient"]["directoryName"], x509.Name([]))
    if header.message_time:
        h["messageTime"] = h["messageTime"].clone(datetime.now(UTC).strftime("%Y%m%d%H%M%SZ"))
    kid = header.sender_kid
    if kid == "auto":
        kid = protection.ski if isinstance(protection, Signed) else protection.reference
    if isinstance(protection, Signed):
        h["protectionAlg"]["algorithm"] = univ.ObjectIdentifier(header.protection_oid or ECDSA_SHA256)
    else:
        params = rfc9480.PBMParameter()
        params["salt"] = protection.salt
        params["owf"]["algorithm"] = univ.ObjectIdentifier(SHA256)
        params["iterationCount"] = protection.iterations
        params["mac"]["algorithm"] = univ.ObjectIdentifier(HMAC_SHA256)
        h["protectionAlg"]["algorithm"] = univ.ObjectIdentifier(PASSWORD_BASED_MAC)
        h["protectionAlg"]["parameters"] = encoder.encode(params)
    if kid is not None:
        h["senderKID"] = h["senderKID"].clone(kid)
    if header.transaction_id:
        h["transactionID"] = h["transactionID"].clone(header.transaction_id)
    for oid, value in header.general_info:
        item = _append(h["generalInfo"])
        item["infoType"] = univ.ObjectIdentifier(oid)
        if value is not None:
            item["infoValue"] = value
    h["senderNonce"] = h["senderNonce"].clone(header.sender_nonce)
    if header.recip_nonce is not None:
        h["recipNonce"] = h["recipNonce"].clone(header.recip_nonce)
    part = rfc9480.ProtectedPart()
    part["header"] = msg["header"]
    part["body"] = msg["body"]
    data = encoder.encode(part)
    if isinstance(protection, Signed):
        value = protection.key.sign(data, ec.ECDSA(hashes.SHA256()))
        certs = protection.extra_certs_override
        if certs is None:
            certs = (protection.cert.public_bytes(_DER), *protection.extra)
    else:
        value = hmac.new(protection.key(), data, "sha256").digest()
        certs = ()
    msg["protection"] = _component(msg, "protection").clone(hexValue=value.hex())
    for cert in certs:
        msg["extraCerts"].append(_decode(cert, rfc9480.CMPCertificate()))
    return encoder.encode(msg)


def malformed_certificate(cert: x509.Certificate, defect: str) -> bytes:
    """``cert`` with its first extension duplicated (``"duplicate extension"``), or with its key
    put on secp112r1, a curve nobody supports (``"unknown curve"``); the signature is not redone."""
    parsed = _decode(cert.public_bytes(_DER), rfc5280.Certificate())
    tbs = parsed["tbsCertificate"]
    if defect == "duplicate extension":
        tbs["extensions"].append(tbs["extensions"][0])
    else:
        tbs["subjectPublicKeyInfo"]["algorithm"]["parameters"] = encoder.encode(univ.ObjectIdentifier("1.3.132.0.6"))
    return encoder.encode(parsed)


# ---------------------------------------------------------------------------------------------
# Reading the answer


_FAIL_BITS = (
    "badAlg", "badMessageCheck", "badRequest", "badTime", "badCertId", "badDataFormat",
    "wrongAuthority", "incorrectData", "missingTimeStamp", "badPOP", "certRevoked", "certConfirmed",
    "wrongIntegrity", "badRecipientNonce", "timeNotAvailable", "unacceptedPolicy",
    "unacceptedExtension", "addInfoNotAvailable", "badSenderNonce", "badCertTemplate",
    "signerNotTrusted", "transactionIdInUse", "unsupportedVersion", "notAuthorized",
    "systemUnavail", "systemFailure", "duplicateCertReq",
)


@dataclass
class Answer:
    """What a response says, read with pyasn1: its body name, PKIStatus, failInfo bit names and
    (for ip/cp/kup) the certificate."""

    body: str
    status: int | None
    fail: tuple[str, ...]
    certificate: bytes | None
    sender_nonce: bytes
    transaction_id: bytes
    pvno: int = 2
    general_info: tuple[tuple[str, bytes], ...] = ()  # (infoType, DER of infoValue)
    protection_alg: bytes = b""  # DER of the response's protectionAlg
    cert_req_id: int | None = None  # of ip/cp/kup/ccp
    enveloped: bytes | None = None  # encrCert: the EnvelopedData, as a plain SEQUENCE

    @classmethod
    def read(cls, data: bytes) -> Answer:
        msg = _decode(data, rfc9480.PKIMessage())
        name = msg["body"].getName()
        content = msg["body"][name]
        info, cert, req_id, enveloped = None, None, None, None
        if name in ("ip", "cp", "kup", "ccp"):
            response = content["response"][0]
            info = response["status"]
            req_id = int(response["certReqId"])
            if response["certifiedKeyPair"].isValue:
                choice = response["certifiedKeyPair"]["certOrEncCert"]
                if choice.getName() == "certificate":
                    cert = _unwrap(encoder.encode(choice["certificate"]))
                else:
                    tagged = encoder.encode(choice["encryptedCert"]["envelopedData"])
                    assert tagged[0] == 0xA0  # envelopedData [0], implicitly tagged
                    enveloped = b"\x30" + tagged[1:]
        elif name == "rp":
            info = content["status"][0]
        elif name == "error":
            info = content["pKIStatusInfo"]
        status = int(info["status"]) if info is not None else None
        fail: tuple[str, ...] = ()
        if info is not None and info["failInfo"].isValue:
            bits = info["failInfo"]
            fail = tuple(_FAIL_BITS[i] for i, bit in enumerate(bits) if bit)
        h = msg["header"]
        general = tuple((str(i["infoType"]), bytes(i["infoValue"]) if i["infoValue"].isValue else b"")
                        for i in h["generalInfo"])
        return cls(name, status, fail, cert, bytes(h["senderNonce"]),
                   bytes(h["transactionID"]) if h["transactionID"].isValue else b"", pvno=int(h["pvno"]),
                   general_info=general, protection_alg=encoder.encode(h["protectionAlg"]), cert_req_id=req_id,
                   enveloped=enveloped)


def _unwrap(tagged: bytes) -> bytes:
    """The certificate inside its [0] tag (CertOrEncCert's certificate alternative)."""
    assert tagged[0] == 0xA0
    length = tagged[1]
    start = 2 if length < 0x80 else 2 + (length & 0x7F)
    return tagged[start:]
