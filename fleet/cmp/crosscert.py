"""Cross-certification requests (ccr, RFC 9810 §5.3.11 and Appendix D.6): what the server role
checks before the CA certifies another CA's key.

* Who: a ccr is signed by a CA the operator trusts: its certificate has basicConstraints cA and
  chains to an anchor the operator configured, not to this CA (``CertState.FOREIGN``). A MAC, an
  end-entity certificate or one of this CA's own: notAuthorized, in an error message.
* What (Appendix D.6; each refusal is the ccp's rejection): exactly one CertReqMsg, certReqId 0;
  a certTemplate with version v3, signingAlg, subject, issuer (this CA's name), a validity with
  both times (notAfter later than notBefore and than now) and publicKey, else badCertTemplate;
  a key that can sign (a CA key signs certificates), else badCertTemplate; and a signature POP by
  it over the CertRequest, else badPOP. The private key is never sent to the other CA: any other
  POP (raVerified, keyEncipherment with its private key inside, keyAgreement) is badPOP.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from fleet.cmp.backend import CaBackend, CertState, Rejected
from fleet.cmp.der import DerError
from fleet.cmp.messages import CertReqMessages, CertReqMsg, FailInfo
from fleet.cmp.pop import cannot_sign
from fleet.cmp.server_auth import Auth, Refuse, check_pop
from fleet.cmp.trust import parse_name
from fleet.cmp.x509parts import (
    csr_extensions,
    csr_public_key,
    load_public_key,
    short_text,
    template_as_csr,
)

__all__ = ["CrossRequest", "check_cross_request", "check_cross_requester"]

_V3 = 2


@dataclass(frozen=True, slots=True)
class CrossRequest:
    public_key: PublicKeyTypes
    spki: bytes
    subject: x509.Name
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    not_before: datetime
    not_after: datetime


def check_cross_requester(auth: Auth, backend: CaBackend) -> None:
    """Refuse a ccr not signed by a trusted CA (module doc)."""
    signer = auth.signer
    if auth.kind != "signature" or signer is None:
        raise Refuse(FailInfo.notAuthorized, "ccr must be signed by a trusted CA")
    try:
        is_ca = signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        is_ca = False
    if not is_ca:
        raise Refuse(FailInfo.notAuthorized, "ccr must be signed by a CA certificate, not an end entity's")
    if backend.cert_state(signer) is not CertState.FOREIGN:
        raise Refuse(FailInfo.notAuthorized, "ccr must come from another CA this CA is told to trust")


def check_cross_request(body: object, ca_name: x509.Name, now: float) -> CrossRequest:
    """The one CertReqMsg of a ccr, checked (module doc); raises ``Rejected``."""
    assert isinstance(body, CertReqMessages)
    if len(body.messages) != 1:
        raise Rejected("exactly one CertReqMsg is supported", FailInfo.badRequest)
    req = body.messages[0]
    if req.cert_req_id != 0:
        raise Rejected(f"certReqId must be 0, not {req.cert_req_id}", FailInfo.badRequest)
    t = req.template
    if t.version != _V3:
        raise Rejected("certTemplate version must be v3" + ("" if t.version is None else f", not v{t.version + 1}"),
                       FailInfo.badCertTemplate)
    validity = t.validity
    missing = [name for name, value in (
        ("signingAlg", t.signing_alg), ("subject", t.subject), ("issuer", t.issuer), ("publicKey", t.public_key),
        ("validity notBefore", validity and validity.not_before), ("validity notAfter", validity and validity.not_after),
    ) if value is None]
    if missing:
        raise Rejected(f"certTemplate lacks {', '.join(missing)}", FailInfo.badCertTemplate)
    assert t.issuer is not None and t.public_key is not None and t.subject is not None and validity is not None
    assert validity.not_before is not None and validity.not_after is not None
    try:
        if parse_name(t.issuer) != ca_name:
            raise Rejected("certTemplate issuer is not this CA", FailInfo.badCertTemplate)
        subject = parse_name(t.subject)
    except (DerError, ValueError) as exc:
        raise Rejected(f"unusable name in certTemplate: {short_text(exc)}", FailInfo.badCertTemplate) from None
    if validity.not_after <= validity.not_before or validity.not_after.timestamp() <= now:
        raise Rejected("certTemplate validity ends before it starts or in the past", FailInfo.badCertTemplate)
    if t.extensions is None:
        public_key = load_public_key(t.public_key)
        extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    else:
        csr = template_as_csr(t)
        public_key, extensions = csr_public_key(csr), csr_extensions(csr)
    if cannot_sign(public_key):
        raise Rejected("a CA key must be able to sign", FailInfo.badCertTemplate)
    _check_signature_pop(req, public_key)
    return CrossRequest(public_key, t.public_key, subject, extensions,
                        validity.not_before.astimezone(UTC), validity.not_after.astimezone(UTC))


def _check_signature_pop(req: CertReqMsg, public_key: PublicKeyTypes) -> None:
    popo = req.popo
    if popo is None:
        raise Rejected("ccr needs a signature proof of possession", FailInfo.badPOP)
    if popo.kind != "signature":
        raise Rejected(f"{popo.kind} proof of possession is not accepted for a ccr (signature only)", FailInfo.badPOP)
    check_pop(req, public_key)
