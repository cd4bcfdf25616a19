"""Protection in the CMP server role: who sent a request and may it ask what it asks, and
responses protected as the requests they answer (``ResponseWriter``).

Checks, in order (RFC 9483 §3, checklist items 13-17), after the request decoded:

* ``Authenticator.authenticate``, one step for every body: a MAC with the secret the
  ``SecretLookup`` finds for senderKID and a directoryName sender, or a signature by a
  certificate that chains to the trust anchors (vendor (IDevID) anchors for ir only), named by
  sender and senderKID, and still good in the CA's records (``CaBackend.cert_state``: not
  revoked, on hold, unconfirmed or replaced by a kur). A signer the records refuse is not
  refused here: the denial goes back to the engine, which answers it last, in the request's
  own response where it has a status.
* ``Authenticator.check_header``: pvno 2 or 3, a transactionID, a senderNonce of 16+ octets,
  no recipNonce in a transaction's first message, messageTime present (unless the policy lets
  it be left out) and within the allowed skew, and generalInfo's implicitConfirm (NULL) and
  confirmWaitTime (a GeneralizedTime) well formed and not together (``check_general_info``).
* Then the engine's transaction table (``fleet.cmp.server``); a follow-up must come from the
  same requester (``check_same_requester``). What a request asks is authorised by
  ``check_pop``, ``Authenticator.check_requested_key``, ``Authenticator.authorize_kur`` and
  ``authorize_rr``.

Responses are protected like the request: a MAC request is answered with the same MAC algorithm
and parameters under the same secret, a signed request (and any request whose MAC could not be
verified) with the RA signer's signature, its certificate first in extraCerts with its chain, and
its SKI as senderKID.

Failures of the checks raise ``Refuse`` (an error message); refusals of what a request asks
raise ``Rejected`` (the request's own response, with its status). Both name a
``fleet.cmp.refusals.Refusal``, which gives the failInfo bit. Before the signature path, a
protectionAlg that is neither PBM/PBMAC1 nor a known signature algorithm is badAlg; the
protection certificate must be the first of extraCerts (RFC 9483 §3.3).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from fleet.cmp import der, oids
from fleet.cmp.backend import CaBackend, CertState, KnownCert, Rejected
from fleet.cmp.der import DerError
from fleet.cmp.fastwire import (
    cert_rep_der,
    general_info_der,
    message_time_der,
    response_der,
    response_header_der,
)
from fleet.cmp.messages import (
    NULL_DN_GENERAL_NAME,
    Body,
    BodyType,
    CertRepMessage,
    CertReqMsg,
    FailInfo,
    InfoTypeAndValue,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatus,
    directory_name,
    encode_body,
    general_name_directory,
)
from fleet.cmp.protection import (
    DEFAULT_MAX_PBM_ITERATIONS,
    DEFAULT_MAX_PBMAC1_ITERATIONS,
    Pbmac1Params,
    PbmParams,
    ProtectionError,
    SignatureProtector,
    UnsupportedAlgorithm,
    compute_mac,
    is_mac_algorithm,
    is_signature_algorithm,
    parse_algorithm,
    parse_mac_params,
    verify_signature,
)
from fleet.cmp.refusals import Refusal
from fleet.cmp.shared_secrets import SecretLookup
from fleet.cmp.trust import (
    SignerMismatch,
    TrustStore,
    UnsupportedKey,
    UntrustedSigner,
    cert_der,
    check_signer_names,
    find_signer,
    load_cert,
    public_key_of,
)
from fleet.cmp.x509parts import (
    has_cmc_ra,
    is_rsa_key,
    names_certificate,
    old_cert_id,
    same_key,
    short_text,
)

__all__ = [
    "NEW_REQUESTS",
    "NO_AUTH",
    "Auth",
    "Authenticator",
    "Refuse",
    "ResponseWriter",
    "authorize_rr",
    "check_general_info",
    "check_pop",
    "check_same_requester",
    "is_directory_name",
    "ra_verified_by",
    "response_pvno",
]

# Bodies that start a transaction; every other request follows one.
NEW_REQUESTS = frozenset(
    {BodyType.IR, BodyType.CR, BodyType.KUR, BodyType.P10CR, BodyType.CCR, BodyType.RR, BodyType.GENM}
)


class Refuse(Exception):
    """Answer with an error message (the server's control flow, never escapes ``handle``).

    ``why`` is a ``Refusal`` (the one table of reasons and failInfo bits), or the failInfo of a
    backend's ``Rejected`` passed on. ``auth``: the request's MAC verified before the refusal, so
    the error is protected with that MAC (RFC 9483 §3.2: a response is protected like its request).
    """

    def __init__(self, why: Refusal | FailInfo, text: str, status: PKIStatus = PKIStatus.REJECTION,
                 *, auth: Auth | None = None) -> None:
        super().__init__(text)
        self.fail = why.fail if isinstance(why, Refusal) else why
        self.text = text
        self.status = status
        self.auth = auth


@dataclass(slots=True)
class Auth:
    """How a request was authenticated; responses in its transaction are protected the same way."""

    kind: Literal["mac", "signature", "none"]
    secret: bytes | None = None
    mac_alg: bytes | None = None
    mac_params: PbmParams | Pbmac1Params | None = None
    sender_kid: bytes | None = None
    signer: x509.Certificate | None = None
    signer_der: bytes | None = None

    @property
    def reference(self) -> str | None:
        if self.kind == "mac" and self.sender_kid is not None:
            return self.sender_kid.decode("utf-8", "replace")
        if self.signer is not None:
            cns = self.signer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            return str(cns[0].value) if cns else self.signer.subject.rfc4514_string()
        return None


NO_AUTH = Auth("none")


class Transaction(Protocol):
    """What the checks read of a live transaction (the engine's record of it)."""

    @property
    def kind(self) -> BodyType: ...
    @property
    def auth(self) -> Auth: ...
    @property
    def settles(self) -> int | None: ...


# Signer states the records refuse: status text and refusal (``Authenticator._signer_denial``).
_DENIALS: dict[CertState, tuple[str, Refusal]] = {
    CertState.REVOKED: ("signer certificate is revoked", Refusal.SIGNER_REVOKED),
    CertState.REJECTED: ("signer certificate was rejected (never confirmed)", Refusal.SIGNER_REVOKED),
    CertState.ON_HOLD: ("signer certificate is on hold (revoked with certificateHold)", Refusal.SIGNER_REVOKED),
    CertState.PENDING: ("signer certificate is not confirmed yet", Refusal.SIGNER_PENDING),
    CertState.REPLACED: ("signer certificate was replaced by a key update", Refusal.SIGNER_REPLACED),
    CertState.UNKNOWN: ("signer certificate is not in this CA's records", Refusal.SIGNER_UNKNOWN),
}


class Authenticator:
    """The checks that need the server's policy, secrets, trust anchors and records.

    ``max_iterations`` (None: each MAC algorithm's default cap, as the client has them),
    ``max_rsa_bits``, ``min_nonce_bytes``, ``max_time_skew``, ``allow_replaced_signers`` and
    ``require_message_time`` come from the server's ``ServerConfig``.
    """

    def __init__(
        self,
        backend: CaBackend,
        *,
        secrets: SecretLookup | None,
        trust: TrustStore,
        vendor_trust: TrustStore | None,
        untrusted: tuple[x509.Certificate, ...],
        max_iterations: int | None,
        max_rsa_bits: int,
        min_nonce_bytes: int,
        max_time_skew: float | None,
        allow_replaced_signers: bool,
        require_message_time: bool = True,
    ) -> None:
        self.backend = backend
        self.secrets = secrets
        self.trust = trust
        self.vendor_trust = vendor_trust
        self.untrusted = untrusted
        self.max_pbm_iterations = max_iterations or DEFAULT_MAX_PBM_ITERATIONS
        self.max_pbmac1_iterations = max_iterations or DEFAULT_MAX_PBMAC1_ITERATIONS
        self.max_rsa_bits = max_rsa_bits
        self.min_nonce_bytes = min_nonce_bytes
        self.max_time_skew = max_time_skew
        self.allow_replaced_signers = allow_replaced_signers
        self.require_message_time = require_message_time

    def authenticate(
        self, msg: PKIMessage, now: float, live: Mapping[bytes, Transaction]
    ) -> tuple[Auth, Rejected | None]:
        """The one authentication step of every request, whatever its body (RFC 9483 §3.5):
        how it was protected, and whether the CA's records refuse its signer.

        MAC: the secret ``secrets`` finds for senderKID verifies the MAC, and the sender is a
        directoryName (RFC 9483 §3.1; RFC 9810 §5.1.1 gives a sender that does not know its
        name the NULL-DN, still a directoryName, as OpenSSL sends it). Signature: the
        certificate matching senderKID in extraCerts verifies the signature and chains to a
        trust anchor at ``now``, and sender and senderKID name it (``check_signer_names``).
        These failures raise ``Refuse``: an error message with badMessageCheck, "integrity
        check failed" (RFC 9810 §5.2.3): the header the protection covers does not identify
        the key that made it; badAlg for an algorithm, curve or key type fleet cannot use. Then
        the CA's records must still let the signer act (``_signer_denial``); a refusal is
        returned, for the engine to answer once it has checked the header and the transaction
        table. ``live`` holds the live transactions by transactionID.
        """
        h = msg.header
        alg = h.protection_alg
        if msg.protection is None or alg is None:
            raise Refuse(Refusal.UNPROTECTED, "request is not protected")
        params = _known_mac_params.get(alg)  # a device reuses its salt: usually here
        if params is not None or _is_mac(alg):
            secret = self.secrets(h.sender_kid) if self.secrets is not None else None
            if secret is None:
                raise Refuse(Refusal.NO_SECRET, "no shared secret for this reference")
            if params is None or params.iterations > self.max_iterations(type(params)):
                try:
                    params = _mac_params(alg, self.mac_iteration_cap(alg))
                except UnsupportedAlgorithm as exc:
                    raise Refuse(Refusal.UNKNOWN_ALGORITHM, str(exc)) from None
                except ProtectionError as exc:
                    raise Refuse(Refusal.MALFORMED_MAC_PARAMS, str(exc)) from None
            if not hmac.compare_digest(compute_mac(params, secret, msg.protected_part), msg.protection):
                raise Refuse(Refusal.MAC_MISMATCH, "MAC does not verify")
            auth = Auth("mac", secret=secret, mac_alg=alg, mac_params=params, sender_kid=h.sender_kid)
            if not is_directory_name(h.sender):
                raise Refuse(Refusal.SENDER_NOT_DIRECTORY_NAME, "sender must be a directoryName (RFC 9483 §3.1)",
                             auth=auth)
            return auth, None
        if not _is_signature(alg):
            raise Refuse(Refusal.UNKNOWN_ALGORITHM, f"protectionAlg {_oid_text(alg)} is neither a supported "
                                                    "signature nor PasswordBasedMac/PBMAC1")
        signer = self._verified_signer(msg, now, live)
        try:
            check_signer_names(h.sender, h.sender_kid, signer)
        except SignerMismatch as exc:
            raise Refuse(Refusal.SIGNER_NOT_NAMED, str(exc)) from None
        auth = Auth("signature", sender_kid=h.sender_kid, signer=signer,
                    signer_der=cert_der(signer))
        return auth, self._signer_denial(msg, auth, signer, live)

    def max_iterations(self, params_type: type) -> int:
        """The iteration cap for PBM or PBMAC1 parameters (``mac_iteration_cap``)."""
        return self.max_pbmac1_iterations if params_type is Pbmac1Params else self.max_pbm_iterations

    def mac_iteration_cap(self, alg_der: bytes) -> int:
        """The iteration cap for this MAC AlgorithmIdentifier: PBMAC1's or PasswordBasedMac's."""
        return self.max_pbmac1_iterations if _is_pbmac1(alg_der) else self.max_pbm_iterations

    def _verified_signer(
        self, msg: PKIMessage, now: float, live: Mapping[bytes, Transaction]
    ) -> x509.Certificate:
        """The certificate whose key made the signature, its path to an anchor verified at
        ``now``. A certificate cryptography cannot read (a duplicated extension, an unknown
        curve) is bad protection like any other, not a server failure."""
        h = msg.header
        assert h.protection_alg is not None and msg.protection is not None
        try:
            signer = find_signer(msg.extra_certs, h.sender_kid)
            public_key = public_key_of(signer)
            self.check_key_size(public_key, "signer")
            verify_signature(h.protection_alg, public_key, msg.protected_part, msg.protection)
            untrusted = [load_cert(c) for c in msg.extra_certs]
        except UnsupportedKey as exc:
            raise Refuse(Refusal.UNSUPPORTED_KEY, short_text(exc)) from None
        except (UnsupportedAlgorithm, CryptographyUnsupported) as exc:
            raise Refuse(Refusal.UNKNOWN_ALGORITHM, short_text(exc)) from None
        except ProtectionError as exc:
            raise Refuse(Refusal.SIGNATURE_INVALID, short_text(exc)) from None
        except (ValueError, TypeError) as exc:  # unusable key in the signer certificate
            raise Refuse(Refusal.UNUSABLE_SIGNER, f"unusable signer certificate: {short_text(exc)}") from None
        if untrusted[0] is not signer and untrusted[0] != signer:
            raise Refuse(Refusal.SIGNER_NOT_FIRST, "the protection certificate must be the first of extraCerts "
                                                   "(RFC 9483 §3.3)")
        untrusted.extend(self.untrusted)
        try:
            self.trust.verify(signer, untrusted, at=datetime.fromtimestamp(now, UTC))
        except UntrustedSigner as exc:
            vendor = self.vendor_trust
            if vendor is None or not _vendor_allowed(msg, live):
                raise Refuse(Refusal.UNTRUSTED_SIGNER, str(exc)) from None
            try:
                vendor.verify(signer, untrusted, at=datetime.fromtimestamp(now, UTC))
            except UntrustedSigner as exc2:
                raise Refuse(Refusal.UNTRUSTED_SIGNER, str(exc2)) from None
        return signer

    def _signer_denial(
        self, msg: PKIMessage, auth: Auth, signer: x509.Certificate, live: Mapping[bytes, Transaction]
    ) -> Rejected | None:
        """Whether the CA's records refuse a (verified) signer, and with which failInfo.

        Revoked, rejected and on-hold certificates: certRevoked (RFC 9810 §5.2.3, "the
        certificate has already been revoked"; a hold is a revocation with reason
        certificateHold, RFC 5280 §5.3.1, and CRL and OCSP say revoked). Not yet confirmed, or
        replaced by a confirmed kur: notAuthorized ("the sender was not authorized to make the
        preceding request"; the certificate itself is not revoked). Issued under this CA's
        name but unknown to its records: signerNotTrusted ("signer of the message unknown").
        Two exceptions, so that the records never lock a holder out of its own revocation: an
        rr naming the signer's own certificate goes on to the rr rules (which let it revoke
        itself, release its own hold, or refuse as before), and the follow-ups of a transaction
        whose own request changed the signer's status still get their answers."""
        state = self.backend.cert_state(signer)
        if state is CertState.GOOD or state is CertState.FOREIGN:
            return None
        if state is CertState.REPLACED and self.allow_replaced_signers:
            return None
        if msg.body_type is BodyType.RR and names_certificate(msg.body, signer):
            return None
        tx = live.get(msg.header.transaction_id or b"")
        if (tx is not None and msg.body_type not in NEW_REQUESTS and tx.settles == signer.serial_number
                and tx.auth.signer_der == auth.signer_der):
            return None
        text, fail = _DENIALS[state]
        return Rejected(text, fail)

    def check_key_size(self, public_key: PublicKeyTypes, what: str) -> None:
        if is_rsa_key(type(public_key)):
            # is_rsa_key stands in for isinstance (an ABC check, dear on every signed request)
            # and mypy cannot narrow from it: the key is an RSAPublicKey here.
            bits: int = public_key.key_size  # type: ignore[union-attr]
            if not 2048 <= bits <= self.max_rsa_bits:
                raise Refuse(Refusal.UNSUPPORTED_KEY, f"{what} RSA key of {bits} bits is outside "
                                                      f"2048..{self.max_rsa_bits}")

    def check_requested_key(self, public_key: PublicKeyTypes) -> None:
        """A requested key fleet would not certify: the request's own rejection, badCertTemplate."""
        try:
            self.check_key_size(public_key, "requested")
        except Refuse as refusal:
            raise Rejected(refusal.text, Refusal.TEMPLATE) from None

    def check_header(self, h: PKIHeader, now: float, *, first: bool) -> None:
        """RFC 9483 §3.1 and §3.5 for any request; ``first``: it starts a transaction."""
        if h.pvno not in (2, 3):
            raise Refuse(Refusal.BAD_VERSION, f"pvno {h.pvno} is not supported (use 2 or 3)")
        if not h.transaction_id:
            raise Refuse(Refusal.NO_TRANSACTION_ID, "request lacks a transactionID")
        if h.sender_nonce is None or len(h.sender_nonce) < self.min_nonce_bytes:
            raise Refuse(Refusal.BAD_SENDER_NONCE,
                         f"senderNonce must be at least {self.min_nonce_bytes} octets")
        if first and h.recip_nonce is not None:
            raise Refuse(Refusal.RECIP_NONCE_IN_FIRST, "the first message of a transaction must not carry "
                                                       "a recipNonce (RFC 9483 §3.1)")
        when = h.message_time
        if when is None:
            if self.require_message_time:
                raise Refuse(Refusal.NO_MESSAGE_TIME, "request lacks messageTime (RFC 9483 §3.1)")
        elif self.max_time_skew is not None and abs(_timestamp(when) - now) > self.max_time_skew:
            raise Refuse(Refusal.MESSAGE_TIME_OFF, f"messageTime is more than {self.max_time_skew:g} s off")
        if h.general_info:
            check_general_info(h.general_info)

    def is_pki_entity(self, auth: Auth) -> bool:
        """Whether a signer is a trusted PKI management entity that may revoke for others: its
        certificate carries id-kp-cmcRA (RFC 6402) and chains to an anchor the operator
        configured, not to this CA (which honours requested extended key usages, so its own
        end entities cannot count)."""
        signer = auth.signer
        if signer is None or not has_cmc_ra(signer):
            return False
        return self.backend.cert_state(signer) is CertState.FOREIGN

    def authorize_kur(self, auth: Auth, controls: bytes | None) -> x509.Certificate:
        """kur: the certificate being updated must be ours and alive, and the request signed with
        it or with its key (RFC 9483 §4.1.3)."""
        signer = auth.signer
        assert signer is not None
        target: KnownCert | None
        old_id = old_cert_id(controls)
        if old_id is not None:
            issuer, serial = old_id
            target = self.backend.find(issuer, serial)
        else:
            target = self.backend.find(signer.issuer, signer.serial_number)
        if target is None:
            raise Rejected("certificate to update was not issued by this CA", Refusal.UPDATE_UNKNOWN)
        if target.status in ("revoked", "rejected"):
            raise Rejected("certificate to update is revoked", Refusal.UPDATE_REVOKED)
        if target.status == "pending":
            raise Rejected("certificate to update is not confirmed yet", Refusal.UPDATE_NOT_CONFIRMED)
        if target.der != auth.signer_der and self.backend.cert_state(target.cert) is CertState.REPLACED:
            raise Rejected("certificate to update was already updated", Refusal.UPDATE_REPLACED)
        if target.der != auth.signer_der and not same_key(target.cert, signer):
            raise Rejected("kur is not signed with the certificate being updated", Refusal.UPDATE_NOT_AUTHORIZED)
        return target.cert


class ResponseWriter:
    """Responses encoded and protected like the request they answer (module doc).

    The bytes are what ``encoding.encode_header``/``encode_body``/``assemble`` would give (the
    tests compare them), put together by ``fleet.cmp.fastwire`` from parts that repeat between
    responses and are encoded once: messageTime per second, generalInfo, caPubs, extraCerts.
    """

    def __init__(self, signer: SignatureProtector, random: Callable[[int], bytes]) -> None:
        self.signer = signer
        self._random = random
        self._signer_name = directory_name(signer.sender_name)

    def write(
        self, request: PKIHeader, auth: Auth, now: float, body_type: BodyType, body: Body,
        info: tuple[InfoTypeAndValue, ...] = (), extra: tuple[bytes, ...] = (), pvno: int = 2,
    ) -> tuple[bytes, bytes]:
        """A response to ``request`` (authenticated as ``auth``) made at ``now``, with generalInfo
        ``info``, extraCerts ``extra`` and version ``pvno`` (``response_pvno``); returns (bytes,
        our senderNonce)."""
        nonce = self._random(16)
        mac = auth.kind == "mac"
        if mac:
            sender = _mac_sender(request.recipient) or self._signer_name
            alg, kid = auth.mac_alg, auth.sender_kid
        else:
            sender, alg, kid = self._signer_name, self.signer.algorithm, self.signer.sender_kid
        header_der = response_header_der(
            sender, request.sender, message_time_der(now), alg, kid, request.transaction_id, nonce,
            request.sender_nonce, general_info_der(info) if info else b"", pvno,
        )
        if body_type is BodyType.PKICONF:
            body_der = _PKICONF_BODY  # always the same NULL
        else:
            body_der = cert_rep_der(body_type, body) or encode_body(body_type, body)
        part = der.tlv(der.SEQUENCE, header_der + body_der)
        if mac:
            assert auth.mac_params is not None and auth.secret is not None
            protection = compute_mac(auth.mac_params, auth.secret, part)
            certs = extra
        else:
            protection = self.signer.protect(part)
            certs = _signed_extra_certs(self.signer.extra_certs, extra)
        return response_der(header_der, body_der, protection, certs), nonce


_PKICONF_BODY = encode_body(BodyType.PKICONF, PKIConfirmContent())


def response_pvno(request_pvno: int, body: Body) -> int:
    """The version of a response (RFC 9810 §7): the request's when the server supports it (2 or
    3), else the nearest it supports (an unsupportedVersion error); 3 whenever the response
    itself carries EnvelopedData (a centrally generated private key or an encrypted certificate),
    a CMP v3 feature."""
    if type(body) is CertRepMessage and any(
            r.private_key is not None or r.encrypted_cert is not None for r in body.responses):
        return 3
    return 3 if request_pvno >= 3 else 2


def _mac_sender(recipient: bytes) -> bytes | None:
    """For MAC responses, answer as whom the request addressed (OpenSSL checks the sender
    against its -recipient), unless that was the NULL-DN."""
    if recipient == NULL_DN_GENERAL_NAME:
        return None
    return recipient if is_directory_name(recipient) else None


@lru_cache(maxsize=64)
def _signed_extra_certs(signer_certs: tuple[bytes, ...], extra: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """extraCerts of a signed response: the signer's chain, then ``extra``, each once. The
    combinations are few (chain, chain + root), so they are worked out once."""
    return tuple(dict.fromkeys(signer_certs + extra))


def _vendor_allowed(msg: PKIMessage, live: Mapping[bytes, Transaction]) -> bool:
    """Vendor (IDevID) certificates may sign an ir and the follow-ups of its transaction."""
    if msg.body_type is BodyType.IR:
        return True
    tx = live.get(msg.header.transaction_id or b"")
    return tx is not None and tx.kind is BodyType.IR


def check_same_requester(auth: Auth, first: Auth) -> None:
    """A follow-up is protected as its transaction's first request: same kind of protection,
    the same MAC secret or the same signer certificate."""
    if auth.kind != first.kind:
        raise Refuse(Refusal.OTHER_PROTECTION, "protection differs from the transaction's first request")
    if auth.kind == "mac" and not hmac.compare_digest(auth.secret or b"", first.secret or b""):
        raise Refuse(Refusal.OTHER_REQUESTER, "MAC secret differs from the transaction's first request")
    if auth.kind == "signature" and auth.signer_der != first.signer_der:
        raise Refuse(Refusal.OTHER_REQUESTER, "signer differs from the transaction's first request")


def check_pop(req: CertReqMsg, public_key: PublicKeyTypes) -> None:
    """Proof of possession: a signature over the CertRequest itself by the requested key
    (raVerified and the other methods: ``fleet.cmp.pop.prove``)."""
    popo = req.popo
    if popo is None:
        raise Rejected("proof of possession is missing", Refusal.POP)
    if popo.kind != "signature":
        raise Rejected(f"{popo.kind} proof of possession is not accepted", Refusal.POP)
    if popo.poposk_input is not None or popo.algorithm is None or popo.signature is None:
        raise Rejected("POP must sign the CertRequest itself (no poposkInput)", Refusal.POP)
    try:
        verify_signature(popo.algorithm, public_key, req.cert_request_der, popo.signature)
    except UnsupportedAlgorithm as exc:
        raise Rejected(f"POP: {exc}", Refusal.POP_ALGORITHM) from None
    except ProtectionError:
        raise Rejected("POP signature does not verify with the requested key", Refusal.POP) from None


def ra_verified_by(
    auth: Auth, ra_trust: TrustStore | None, untrusted: tuple[x509.Certificate, ...], now: float
) -> bool:
    """Whether ``auth`` is a signature by an RA the CA trusts (its certificate chains to
    ``ra_trust``): only such a request may claim raVerified POP."""
    if ra_trust is None or not len(ra_trust) or auth.kind != "signature" or auth.signer is None:
        return False
    try:
        ra_trust.verify(auth.signer, untrusted, at=datetime.fromtimestamp(now, UTC))
    except UntrustedSigner:
        return False
    return True


def authorize_rr(auth: Auth, target: KnownCert, pki_entity: bool = False) -> None:
    """rr: signed with the certificate to revoke, or with its key under the same subject, or by
    a trusted PKI management entity (``Authenticator.is_pki_entity``, RFC 9483 §5.3.2); a
    MAC-protected rr gets here only where the configuration allows it (``allow_mac_rr``)."""
    if auth.kind == "mac" or pki_entity:
        return
    signer = auth.signer
    assert signer is not None
    if target.der == auth.signer_der:
        return
    if same_key(target.cert, signer) and target.cert.subject == signer.subject:
        return
    raise Rejected("rr must be signed with the certificate to revoke or its key", Refusal.REV_NOT_AUTHORIZED)


@lru_cache(maxsize=4096)
def is_directory_name(general_name: bytes) -> bool:
    """Cached: a device addresses the same CA name in every request."""
    try:
        return general_name_directory(general_name) is not None
    except DerError:
        return False


@lru_cache(maxsize=65_536)
def _is_mac(alg_der: bytes) -> bool:
    return is_mac_algorithm(alg_der)


@lru_cache(maxsize=65_536)
def _mac_params(alg_der: bytes, max_iterations: int) -> PbmParams | Pbmac1Params:
    """Parsed MAC parameters, cached: a device reuses its salt, so its protectionAlg repeats."""
    params = parse_mac_params(alg_der, max_iterations=max_iterations)
    if len(_known_mac_params) >= 65_536:
        _known_mac_params.clear()
    _known_mac_params[alg_der] = params
    return params


# protectionAlg -> the parameters ``_mac_params`` parsed from it under some cap: one dict look-up
# for a request instead of two lru_cache calls; the caller still checks its own iteration cap.
_known_mac_params: dict[bytes, PbmParams | Pbmac1Params] = {}


@lru_cache(maxsize=64)
def _timestamp(when: datetime) -> float:
    """``when.timestamp()``, cached: the reader hands out one datetime per messageTime value."""
    return when.timestamp()


@lru_cache(maxsize=1024)
def _is_signature(alg_der: bytes) -> bool:
    return is_signature_algorithm(alg_der)


@lru_cache(maxsize=1024)
def _is_pbmac1(alg_der: bytes) -> bool:
    return _oid_text(alg_der) == oids.PBMAC1


def _oid_text(alg_der: bytes) -> str:
    try:
        return parse_algorithm(alg_der)[0]
    except DerError:
        return "(unreadable)"


def check_general_info(info: tuple[InfoTypeAndValue, ...]) -> None:
    """generalInfo of a request (RFC 9483 §3.1): implicitConfirm and confirmWaitTime not both,
    implicitConfirm's value NULL, confirmWaitTime's a GeneralizedTime."""
    implicit = wait = None
    for item in info:
        if item.oid == oids.IT_IMPLICIT_CONFIRM:
            implicit = item
        elif item.oid == oids.IT_CONFIRM_WAIT_TIME:
            wait = item
    if implicit is not None and wait is not None:
        raise Refuse(Refusal.IMPLICIT_AND_WAIT, "implicitConfirm and confirmWaitTime exclude each other "
                                                "(RFC 9483 §3.1)")
    if implicit is not None and implicit.value != der.NULL_DER:
        raise Refuse(Refusal.IMPLICIT_CONFIRM_VALUE, "implicitConfirm's value must be NULL (RFC 9483 §3.1)")
    if wait is not None and not _is_generalized_time(wait.value):
        raise Refuse(Refusal.CONFIRM_WAIT_TIME_VALUE,
                     "confirmWaitTime's value must be a GeneralizedTime (RFC 9483 §3.1)")


def _is_generalized_time(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        node = der.parse(value)
        if node.tag != der.GENERALIZED_TIME:
            return False
        der.time_value(node.tag, node.content)
    except (DerError, ValueError):
        return False
    return True
