"""Proof of possession of the requested key (RFC 9810 §5.2.8, RFC 4211 §4).

* A key that can sign proves possession by signing the CertRequest (``server_auth.check_pop``);
  X25519 and X448 keys cannot sign: a signature POP for one is badPOP.
* raVerified: only when the request is signed by a trusted RA (``Authenticator.is_pki_entity``:
  id-kp-cmcRA under an anchor the operator configured), which vouches for the POP it checked;
  from anyone else badPOP.
* Keys that cannot sign, by the indirect method (RFC 9810 §5.2.8.3): a POPOPrivKey of
  subsequentMessage encrCert. The CA returns the certificate encrypted to the key
  (``fleet.cmp.envelope``) and the certConf's certHash, which only the key's holder can compute,
  is the proof; implicit confirmation is never granted for it. keyAgreement POP for X25519,
  X448, and EC keys that request keyUsage keyAgreement; keyEncipherment POP for RSA keys. An
  X25519/X448 or RSA request without a keyUsage gets keyAgreement or keyEncipherment.
  A keyUsage that also allows signing asks for a signature POP: badPOP.
* The other POPOPrivKey methods (thisMessage, challengeResp, dhMAC, agreeMAC, encryptedKey) are
  not offered: badPOP, the failInfo RFC 9810 §5.2.3 gives a POP the CA cannot verify.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from fleet.cmp import der
from fleet.cmp.backend import Rejected
from fleet.cmp.der import DerError
from fleet.cmp.messages import CertReqMsg, FailInfo
from fleet.cmp.protection import key_is
from fleet.cmp.server_auth import check_pop

__all__ = ["Proof", "cannot_sign", "check_private_key_pop", "prove"]

_SUBSEQUENT_MESSAGE = 0x81  # POPOPrivKey subsequentMessage [1]
_ENCR_CERT = 0
_METHODS = {0x80: "thisMessage", 0x82: "dhMAC", 0xA3: "agreeMAC", 0xA4: "encryptedKey"}
_SIGNING_BITS = ("digital_signature", "content_commitment", "key_cert_sign", "crl_sign")


class Proof:
    """What the POP check found: whether the certificate goes back encrypted (indirect method)
    and the extensions to issue with (a keyUsage added where none was asked for)."""

    __slots__ = ("extensions", "indirect")

    def __init__(self, indirect: bool, extensions: tuple[x509.Extension[x509.ExtensionType], ...]) -> None:
        self.indirect = indirect
        self.extensions = extensions


def prove(
    req: CertReqMsg, public_key: PublicKeyTypes, extensions: tuple[x509.Extension[x509.ExtensionType], ...],
    trusted_ra: Callable[[], bool],
) -> Proof:
    """Check the POP of ``req`` for ``public_key`` (module doc); ``trusted_ra`` says whether the
    request's signer may vouch for it (raVerified)."""
    popo = req.popo
    kind = popo.kind if popo is not None else None
    if kind == "signature" or kind is None:
        if kind is not None and cannot_sign(public_key):
            raise Rejected("this key cannot sign: prove possession by keyAgreement (encrCert)", FailInfo.badPOP)
        check_pop(req, public_key)
        return Proof(False, extensions)
    if kind == "raVerified":
        if not trusted_ra():
            raise Rejected("raVerified proof of possession is accepted from a trusted RA only", FailInfo.badPOP)
        return Proof(False, extensions)
    return check_private_key_pop(req, public_key, extensions)


def cannot_sign(public_key: object) -> bool:
    kind: type = type(public_key)
    return key_is(kind, x25519.X25519PublicKey) or key_is(kind, x448.X448PublicKey)


def check_private_key_pop(
    req: CertReqMsg, public_key: PublicKeyTypes, extensions: tuple[x509.Extension[x509.ExtensionType], ...]
) -> Proof:
    """A keyEncipherment or keyAgreement POP (module doc); raises ``Rejected`` (badPOP)."""
    popo = req.popo
    assert popo is not None and popo.raw is not None
    agreement = popo.kind == "keyAgreement"
    if agreement and not isinstance(public_key, (x25519.X25519PublicKey, x448.X448PublicKey,
                                                 ec.EllipticCurvePublicKey)):
        raise Rejected("keyAgreement proof of possession needs a key agreement key", FailInfo.badPOP)
    if not agreement and not isinstance(public_key, rsa.RSAPublicKey):
        raise Rejected("keyEncipherment proof of possession needs an RSA key", FailInfo.badPOP)
    try:
        choice = der.parse(popo.raw).unwrap()
    except DerError as exc:
        raise Rejected(f"malformed POPOPrivKey: {exc}", FailInfo.badDataFormat) from None
    if choice.tag != _SUBSEQUENT_MESSAGE:
        method = _METHODS.get(choice.tag, f"tag 0x{choice.tag:02x}")
        raise Rejected(f"POPOPrivKey {method} is not supported; use subsequentMessage encrCert",
                       FailInfo.badPOP)
    if int.from_bytes(choice.content, "big", signed=True) != _ENCR_CERT:
        raise Rejected("subsequentMessage challengeResp is not supported; use encrCert", FailInfo.badPOP)
    usage = _key_usage(extensions)
    wanted = "key_agreement" if agreement else "key_encipherment"
    if usage is None:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            raise Rejected("an EC key proves possession by keyAgreement only with keyUsage keyAgreement "
                           "requested", FailInfo.badPOP)
        return Proof(True, (*extensions, _default_usage(wanted)))
    if any(getattr(usage, bit) for bit in _SIGNING_BITS):
        raise Rejected("a key whose keyUsage allows signing proves possession by signing", FailInfo.badPOP)
    if not getattr(usage, wanted) and not (not agreement and usage.data_encipherment):
        raise Rejected(f"requested keyUsage lacks {'keyAgreement' if agreement else 'keyEncipherment'}",
                       FailInfo.badPOP)
    return Proof(True, extensions)


def _key_usage(extensions: tuple[x509.Extension[x509.ExtensionType], ...]) -> x509.KeyUsage | None:
    for ext in extensions:
        if isinstance(ext.value, x509.KeyUsage):
            return ext.value
    return None


def _default_usage(bit: str) -> x509.Extension[x509.ExtensionType]:
    flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    flags[bit] = True
    return x509.Extension(x509.ExtensionOID.KEY_USAGE, True, x509.KeyUsage(**flags))
