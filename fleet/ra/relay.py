"""What an RA does to each message, without I/O (RFC 9483 §5.2): verify, transform, relay back.

``Relay.accept`` verifies a device's request before anything goes upstream: it must decode,
carry a MAC made with the device's secret (a shared one, derived per device from a master, or
from a table) or a signature chaining to the device trust anchors (vendor/IDevID anchors for
ir), and a good header (pvno, transactionID, senderNonce, messageTime); a follow-up must come
from the requester that started its transaction. A failure is answered by the RA itself with
an error message carrying the failInfo the CA would give (``RaRefusal``); the CA never sees it.

Then the mode (RFC 9483 §5.2.2, ``RaMode``):

* ``pass``: the request goes upstream unchanged and the answer comes back unchanged;
* ``nested``: requests go upstream inside a nested message signed by the RA (``envelope``;
  one or many: batching), the answer envelope is verified and split back by transactionID
  (``open_envelope``), each inner answer relayed unchanged;
* ``replace``: the RA re-protects the request with its own signature (RFC 9483 §5.2.3), the
  POP of ir/cr replaced by raVerified once the RA verified it (§5.2.3.2); transactionID and
  nonces are kept, so the device's certConf and pollReq still match the CA's answers, and are
  re-protected the same way. kur and rr go unchanged: the CA must see the holder's own
  signature. The answer to a MAC-protected device is verified and re-protected with the
  device's MAC; a signature-protected device gets the CA's answer as it is.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from fleet.cmp import der
from fleet.cmp.backend import CertState
from fleet.cmp.der import DerError
from fleet.cmp.fastwire import decode_request
from fleet.cmp.messages import (
    NULL_DN_GENERAL_NAME,
    BodyType,
    CertReqMessages,
    ErrorMsgContent,
    FailInfo,
    MessageError,
    PKIHeader,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
    assemble,
    directory_name,
    encode_header,
    protected_part,
)
from fleet.cmp.nested import wrap
from fleet.cmp.protection import ProtectionError, SignatureProtector, compute_mac, verify_signature
from fleet.cmp.server_auth import (
    NEW_REQUESTS,
    NO_AUTH,
    Auth,
    Authenticator,
    Refuse,
    ResponseWriter,
    check_pop,
    check_same_requester,
)
from fleet.cmp.shared_secrets import SecretLookup
from fleet.cmp.trust import TrustStore, UntrustedSigner, find_signer, load_cert
from fleet.cmp.x509parts import load_public_key, short_text
from fleet.errors import FleetError
from fleet.ra.batching import EnvelopeRefused, open_envelope
from fleet.randomness import RandomPool

__all__ = ["Inbound", "RaMode", "RaRefusal", "Relay", "RelayPolicy", "UpstreamRefusal"]


class RaMode(enum.StrEnum):
    PASS = "pass"
    NESTED = "nested"
    REPLACE = "replace"


@dataclass(frozen=True)
class RelayPolicy:
    """The RA's checks. Times in seconds."""

    mode: RaMode = RaMode.PASS
    max_time_skew: float | None = 300.0
    max_iterations: int = 10_000
    max_rsa_bits: int = 8192
    min_nonce_bytes: int = 16
    transaction_ttl: float = 900.0  # a transaction's record is kept this long after its last message
    max_transactions: int = 1_000_000


class RaRefusal(FleetError):
    """A device message the RA answers itself: ``data`` is the error message to send back."""

    def __init__(self, data: bytes, request: str, fail: FailInfo, text: str) -> None:
        super().__init__(text)
        self.data = data
        self.request = request
        self.fail = fail
        self.text = text


class UpstreamRefusal(FleetError):
    """The upstream's answer cannot be relayed (unverifiable, or an error for a whole envelope):
    each device gets the RA's own error with ``fail``."""

    def __init__(self, fail: FailInfo, text: str) -> None:
        super().__init__(text)
        self.fail = fail
        self.text = text


@dataclass(slots=True)
class _RelayTx:
    """What the RA remembers of a transaction (read by ``Authenticator`` as its ``Transaction``)."""

    kind: BodyType  # the request that started it
    auth: Auth
    replaced: bool  # forwarded with the RA's protection (replace mode)
    seen: float
    settles: int | None = None


@dataclass(slots=True)
class Inbound:
    """A verified device message on its way upstream."""

    data: bytes
    msg: PKIMessage
    auth: Auth
    replaced: bool = False

    @property
    def transaction_id(self) -> bytes:
        return self.msg.header.transaction_id or b""

    @property
    def label(self) -> str:
        return self.msg.label


class _NoRecords:
    """The RA keeps no certificate records: every verified signer is as good as its path."""

    def cert_state(self, cert: x509.Certificate) -> CertState:
        return CertState.FOREIGN


_RA_VERIFIED = der.tlv(0x80, b"")  # ProofOfPossession raVerified [0] NULL
_POPO_TAGS = frozenset((0x80, 0xA1, 0xA2, 0xA3))
_CERT_REQUESTS = frozenset((BodyType.IR, BodyType.CR))
# Sent unchanged in replace mode: the CA must verify the holder's own signature.
_KEEP_PROTECTION = frozenset((BodyType.KUR, BodyType.RR))


class Relay:
    """The RA's per-message decisions (module doc). ``signer`` is the RA's CMP credential: it
    signs envelopes, re-protected requests and the RA's own error messages."""

    def __init__(
        self,
        signer: SignatureProtector,
        *,
        policy: RelayPolicy | None = None,
        secrets: SecretLookup | None = None,
        trust: TrustStore | None = None,
        vendor_trust: TrustStore | None = None,
        untrusted: tuple[x509.Certificate, ...] = (),
        upstream_trust: TrustStore | None = None,
        random: Callable[[int], bytes] | None = None,
    ) -> None:
        self.signer = signer
        self.policy = p = policy or RelayPolicy()
        self.upstream_trust = upstream_trust
        self.untrusted = untrusted
        self._checks = Authenticator(
            _NoRecords(),  # type: ignore[arg-type]  # only cert_state is asked of it
            secrets=secrets, trust=trust or TrustStore(), vendor_trust=vendor_trust, untrusted=untrusted,
            max_iterations=p.max_iterations, max_rsa_bits=p.max_rsa_bits, min_nonce_bytes=p.min_nonce_bytes,
            max_time_skew=p.max_time_skew, allow_replaced_signers=True,
        )
        self._random = random if random is not None else RandomPool().take
        self._writer = ResponseWriter(signer, self._random)
        self._name = directory_name(signer.sender_name)
        self._live: OrderedDict[bytes, _RelayTx] = OrderedDict()

    # -- device side -----------------------------------------------------------------------

    def accept(self, data: bytes, now: float) -> Inbound:
        """The verified message, or ``RaRefusal`` carrying the RA's error answer."""
        try:
            msg = decode_request(data)
        except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
            header = PKIHeader(NULL_DN_GENERAL_NAME, NULL_DN_GENERAL_NAME)
            raise self._refusal(header, NO_AUTH, now, "malformed", FailInfo.badDataFormat,
                                f"cannot decode request: {short_text(exc)}") from None
        auth = NO_AUTH
        try:
            if msg.body_type is BodyType.NESTED:
                raise Refuse(FailInfo.badRequest, "this RA takes end-entity requests, not nested messages")
            auth, _ = self._checks.authenticate(msg, now, self._live)
            self._checks.check_header(msg.header, now, first=msg.body_type in NEW_REQUESTS)
            tid = msg.header.transaction_id or b""
            known = self._live.get(tid)
            if known is not None and known.seen + self.policy.transaction_ttl <= now:
                known = None
            if msg.body_type in NEW_REQUESTS:
                if known is not None:
                    raise Refuse(FailInfo.transactionIdInUse, "transactionID belongs to a transaction in progress")
            elif known is not None:
                check_same_requester(auth, known.auth)
            replaced = self._replaces(msg, known)
            if replaced and msg.body_type in _CERT_REQUESTS:
                self._check_pop(msg)
        except Refuse as refusal:
            raise self._refusal(msg.header, auth, now, msg.label, refusal.fail, refusal.text) from None
        self._remember(tid, known.kind if known is not None else msg.body_type, auth, replaced, now)
        return Inbound(data, msg, auth, replaced)

    def _replaces(self, msg: PKIMessage, known: _RelayTx | None) -> bool:
        if self.policy.mode is not RaMode.REPLACE:
            return False
        if msg.body_type in NEW_REQUESTS:
            return msg.body_type not in _KEEP_PROTECTION
        return known.replaced if known is not None else False

    def _check_pop(self, msg: PKIMessage) -> None:
        """The POP the RA vouches for with raVerified (RFC 9483 §5.2.3.2)."""
        body = msg.body
        assert isinstance(body, CertReqMessages)
        for req in body.messages:
            template = req.template
            if template.public_key is None:
                raise Refuse(FailInfo.badCertTemplate, "certTemplate lacks a publicKey")
            try:
                public_key = load_public_key(template.public_key)
                check_pop(req, public_key)
            except (ValueError, TypeError) as exc:
                raise Refuse(FailInfo.badCertTemplate, f"unusable publicKey: {short_text(exc)}") from None
            except FleetError as exc:  # Rejected: the POP does not verify
                raise Refuse(getattr(exc, "fail", FailInfo.badPOP), str(exc)) from None

    def _remember(self, tid: bytes, kind: BodyType, auth: Auth, replaced: bool, now: float) -> None:
        live = self._live
        live[tid] = _RelayTx(kind, auth, replaced, now)
        live.move_to_end(tid)
        limit = now - self.policy.transaction_ttl
        while live and (len(live) > self.policy.max_transactions or next(iter(live.values())).seen <= limit):
            live.popitem(last=False)

    def refuse(self, inbound: Inbound, fail: FailInfo, text: str, now: float) -> bytes:
        """The RA's own error answer to a verified message (upstream failures, injected errors),
        protected as the device protected its request."""
        return self._refusal(inbound.msg.header, inbound.auth, now, inbound.label, fail, text).data

    def _refusal(self, header: PKIHeader, auth: Auth, now: float, label: str, fail: FailInfo, text: str) -> RaRefusal:
        body = ErrorMsgContent(PKIStatusInfo(PKIStatus.REJECTION, (text[:200],), fail.mask))
        data, _ = self._writer.write(header, auth, now, BodyType.ERROR, body)
        return RaRefusal(data, label, fail, text)

    @property
    def live_transactions(self) -> int:
        return len(self._live)

    # -- upstream --------------------------------------------------------------------------

    def upstream(self, inbound: Inbound, now: float) -> bytes:
        """What goes upstream for one message (pass and replace modes)."""
        if not inbound.replaced:
            return inbound.data
        msg = inbound.msg
        body_der = _body_der(msg)
        if msg.body_type in _CERT_REQUESTS:
            body_der = _ra_verified_body(body_der)
        h = msg.header
        header = PKIHeader(
            sender=self._name, recipient=h.recipient, transaction_id=h.transaction_id,
            sender_nonce=h.sender_nonce, recip_nonce=h.recip_nonce, sender_kid=self.signer.sender_kid,
            recip_kid=h.recip_kid, message_time=_whole_second(now), protection_alg=self.signer.algorithm,
            free_text=h.free_text, general_info=h.general_info, pvno=h.pvno,
        )
        header_der = encode_header(header)
        protection = self.signer.protect(protected_part(header_der, body_der))
        return assemble(header_der, body_der, protection, self.signer.extra_certs)

    def envelope(self, inbound: Sequence[Inbound], now: float) -> tuple[bytes, bytes, bytes]:
        """A nested message carrying ``inbound`` (their transactionIDs distinct: the caller
        batches so); returns (bytes, envelope transactionID, envelope senderNonce)."""
        tid, nonce = self._random(16), self._random(16)
        data = wrap([i.data for i in inbound], self.signer, transaction_id=tid, sender_nonce=nonce, now=now)
        return data, tid, nonce

    def open_envelope(self, data: bytes, tid: bytes, nonce: bytes, now: float) -> dict[bytes, bytes]:
        """The inner answers of an upstream envelope by transactionID (``batching.open_envelope``
        with this RA's upstream trust); ``UpstreamRefusal`` when there are none to relay."""
        try:
            return open_envelope(data, tid, nonce, now, trust=self.upstream_trust, untrusted=self.untrusted)
        except EnvelopeRefused as exc:
            raise UpstreamRefusal(exc.fail, exc.problem) from None

    def downstream(self, inbound: Inbound, data: bytes, now: float) -> bytes:
        """The answer to send the device for upstream answer ``data``."""
        if not inbound.replaced or inbound.auth.kind != "mac":
            return data
        msg = self._decode_upstream(data)
        self._verify_upstream(msg, now)
        return self._remac(inbound, msg)

    def _remac(self, inbound: Inbound, msg: PKIMessage) -> bytes:
        """The upstream's (verified) answer protected with the device's MAC, addressed to it."""
        auth = inbound.auth
        assert auth.mac_params is not None and auth.secret is not None
        h = msg.header
        request = inbound.msg.header
        sender = request.recipient if request.recipient != NULL_DN_GENERAL_NAME else h.sender
        header = PKIHeader(
            sender=sender, recipient=request.sender, transaction_id=h.transaction_id,
            sender_nonce=h.sender_nonce, recip_nonce=h.recip_nonce, sender_kid=auth.sender_kid,
            message_time=h.message_time, protection_alg=auth.mac_alg, free_text=h.free_text,
            general_info=h.general_info, pvno=h.pvno,
        )
        header_der = encode_header(header)
        body_der = _body_der(msg)
        protection = compute_mac(auth.mac_params, auth.secret, protected_part(header_der, body_der))
        return assemble(header_der, body_der, protection, msg.extra_certs)

    def _decode_upstream(self, data: bytes) -> PKIMessage:
        try:
            return decode_request(data)
        except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
            raise UpstreamRefusal(FailInfo.systemFailure, f"upstream answer does not decode: {short_text(exc)}") from None

    def _verify_upstream(self, msg: PKIMessage, now: float) -> None:
        """The upstream's signature, by a certificate chaining to ``upstream_trust``."""
        trust = self.upstream_trust
        if trust is None:
            return
        h = msg.header
        if msg.protection is None or h.protection_alg is None:
            raise UpstreamRefusal(FailInfo.systemFailure, "upstream answer is not protected")
        try:
            signer = find_signer(msg.extra_certs, h.sender_kid)
            verify_signature(h.protection_alg, signer.public_key(), msg.protected_part, msg.protection)
            trust.verify(signer, [load_cert(c) for c in msg.extra_certs] + list(self.untrusted),
                         at=datetime.fromtimestamp(now, UTC))
        except (ProtectionError, UntrustedSigner, ValueError, TypeError) as exc:
            raise UpstreamRefusal(FailInfo.systemFailure,
                                  f"upstream answer fails verification: {short_text(exc)}") from None


def _body_der(msg: PKIMessage) -> bytes:
    """The body TLV exactly as received (the second element of ProtectedPart)."""
    return der.parse(msg.protected_part).children()[1].raw


def _ra_verified_body(body_der: bytes) -> bytes:
    """ir/cr body with every CertReqMsg's POP replaced by raVerified, the rest byte for byte."""
    outer = der.parse(body_der)
    messages_out = []
    for crm in outer.unwrap().children():
        parts = crm.children()
        rest = parts[1:]
        if rest and rest[0].tag in _POPO_TAGS:
            rest = rest[1:]
        messages_out.append(der.sequence(parts[0].raw, _RA_VERIFIED, *(p.raw for p in rest)))
    return der.tlv(outer.tag, der.sequence(*messages_out))


def _whole_second(now: float) -> datetime:
    return datetime.fromtimestamp(math.floor(now), UTC)
