"""The CA/RA side of CMP, without I/O (the server role of ``fleet.cmp.client``, in the manner of h11).

``CmpServer.handle(data, now)`` takes one request's bytes and returns a ``Reply``: the response
bytes and a small ``Outcome`` record for metrics. ``tick(now)`` expires transactions whose
certConf never came (their certificate is rejected, which CRL and OCSP list as revoked) and
transactions that hung while waiting; callers run it periodically. Nothing here reads a clock,
sleeps or touches a socket: ``fleet.ca.service`` does that.

A request is decoded (``fastwire.decode_request``), authenticated and its header checked
(``fleet.cmp.server_auth``, which states the checks and their order), then handled by the
per-transaction table (``_TRANSITIONS``): a new request on a live or recently closed
transactionID is ``transactionIdInUse``, a follow-up must echo our senderNonce as recipNonce and
use the same kind of protection (and the same signer) as the request it follows. A signer the
records refuse is answered last, in the request's own response where it has a status.

Responses are protected like the request (``server_auth.ResponseWriter``): the same MAC, or the
RA signer's signature.

Issuance, revocation and records live behind ``CaBackend`` (``fleet.cmp.backend``, implemented by
``fleet.ca.authority``), so this module stays protocol logic only.
"""

from __future__ import annotations

import enum
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from fleet.cmp import der, messages, oids
from fleet.cmp.backend import (
    CaBackend,
    IssuedLike,
    IssueRequest,
    Rejected,
)
from fleet.cmp.crosscert import check_cross_request, check_cross_requester
from fleet.cmp.der import DerError
from fleet.cmp.envelope import encrypted_cert
from fleet.cmp.fastwire import decode_request
from fleet.cmp.issue_rate import TokenBucket
from fleet.cmp.kga import KeyGenerator, is_central_request, serve_central
from fleet.cmp.lifecycle import OpenUpdates, check_cert_status, fresh_nonce
from fleet.cmp.messages import (
    BodyType,
    CertConfirmContent,
    CertRepMessage,
    CertReqMessages,
    CertResponse,
    ErrorMsgContent,
    FailInfo,
    GenMsgContent,
    InfoTypeAndValue,
    P10Request,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
    PollRepContent,
    PollRepEntry,
    PollReqContent,
    RevRepContent,
    RevReqContent,
)
from fleet.cmp.pop import Proof, prove
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.refusals import Refusal
from fleet.cmp.server_auth import (
    NEW_REQUESTS,
    NO_AUTH,
    Auth,
    Authenticator,
    Refuse,
    ResponseWriter,
    authorize_rr,
    check_same_requester,
    ra_verified_by,
    response_pvno,
)
from fleet.cmp.server_config import ServerConfig
from fleet.cmp.server_records import Outcome, Reply, ServerStatistics
from fleet.cmp.shared_secrets import SecretLookup
from fleet.cmp.trust import TrustStore, load_cert, parse_name
from fleet.cmp.x509parts import (
    cert_hash,
    csr_extensions,
    csr_public_key,
    load_public_key,
    reason_flags,
    short_text,
    single_reason,
    template_as_csr,
    template_mismatch,
)
from fleet.errors import FleetError
from fleet.randomness import RandomPool

__all__ = [
    "CmpServer",
    "Outcome",
    "Reply",
    "ServerConfig",
    "ServerStatistics",
    "TxState",
]


# ---------------------------------------------------------------------------------------------
# Configuration (results and statistics: ``fleet.cmp.server_records``)


# The requests that start issuing a certificate (what ``ServerConfig.max_issue_rate`` counts).
_ISSUING = frozenset({BodyType.IR, BodyType.CR, BodyType.KUR, BodyType.P10CR, BodyType.CCR})


class TxState(enum.Enum):
    AWAIT_CONFIRM = "await_confirm"
    WAITING = "waiting"  # delayed delivery: the response is ready at ``ready_at``
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------------
# Internal records


@dataclass(slots=True)
class _Tx:
    tid: bytes
    kind: BodyType
    state: TxState
    auth: Auth
    recipient: bytes  # GeneralName of the requester: the recipient of our responses
    our_nonce: bytes
    deadline: float
    cert_req_id: int = 0
    issued: IssuedLike | None = None
    pending: tuple[BodyType, messages.Body, tuple[InfoTypeAndValue, ...], tuple[bytes, ...]] | None = None
    ready_at: float = 0.0
    implicit: bool = False
    # Serial of the signer certificate whose status this transaction's own request changed (an
    # rr revoking it, a kur with implicit confirmation replacing it): its follow-ups still pass.
    settles: int | None = None
    updates: int | None = None  # kur: serial of the certificate it updates, until settled
    nonces: tuple[bytes, ...] = ()  # the requester's senderNonces so far (``lifecycle.fresh_nonce``)


class _Ctx:
    """One request being handled. ``when`` is ``now`` as a datetime, made only if asked for
    (the usual exchange never needs it)."""

    __slots__ = ("auth", "denial", "msg", "now", "tx")

    def __init__(self, msg: PKIMessage, now: float) -> None:
        self.msg = msg
        self.now = now
        self.auth = NO_AUTH  # replaced, never changed in place
        self.tx: _Tx | None = None
        self.denial: Rejected | None = None  # the records refuse the signer (``Authenticator.authenticate``)

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


# ---------------------------------------------------------------------------------------------
# The server


class CmpServer:
    """Many concurrent CMP transactions of one CA/RA, keyed by transactionID."""

    def __init__(
        self,
        backend: CaBackend,
        signer: SignatureProtector,
        *,
        config: ServerConfig | None = None,
        secrets: SecretLookup | None = None,
        trust: TrustStore | None = None,
        vendor_trust: TrustStore | None = None,
        untrusted: tuple[x509.Certificate, ...] = (),
        random: Callable[[int], bytes] | None = None,
        ra_trust: TrustStore | None = None,
        kga: KeyGenerator | None = None,
    ) -> None:
        """``kga``: the key generation authority that serves central key generation (None: this
        server refuses it, badCertTemplate)."""
        self.backend = backend
        self.ra_trust = ra_trust  # RAs whose requests may carry raVerified POP
        self.kga = kga
        self.signer = signer
        self.config = cfg = config or ServerConfig()
        self._checks = Authenticator(
            backend, secrets=secrets, trust=trust or TrustStore(), vendor_trust=vendor_trust,
            untrusted=tuple(untrusted), max_iterations=cfg.max_iterations, max_rsa_bits=cfg.max_rsa_bits,
            min_nonce_bytes=cfg.min_nonce_bytes, max_time_skew=cfg.max_time_skew,
            allow_replaced_signers=cfg.allow_replaced_signers, require_message_time=cfg.require_message_time,
        )
        self._writer = ResponseWriter(signer, random if random is not None else RandomPool().take)
        self._live: dict[bytes, _Tx] = {}
        self._closed: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._counts = {"issued": 0, "confirmed": 0, "expired_unconfirmed": 0, "hung_closed": 0}
        self._confirm_wait_info: tuple[int, tuple[InfoTypeAndValue, ...]] = (-1, ())
        # (the backend's issued_chain, the certificates above an issued one up to the root)
        self._issued_above: tuple[object, tuple[x509.Certificate, ...]] = (None, ())
        self._updates = OpenUpdates()
        self._issue_bucket = TokenBucket(cfg.max_issue_rate) if cfg.max_issue_rate else None

    # -- public surface -------------------------------------------------------------------

    def handle(
        self, data: bytes, now: float, *, defer: float = 0.0, inject_error: bool = False
    ) -> Reply:
        """Answer one request received at ``now`` (seconds since the epoch).

        ``defer`` > 0 answers a new request "waiting" and delivers the real response to a
        pollReq from ``now + defer`` on (delayed delivery, RFC 9483 §4.4); ``inject_error``
        answers a new request with an error (fault injection for capacity tests).
        """
        try:
            msg = decode_request(data)
        except (FleetError, ValueError, IndexError, RecursionError) as exc:
            ctx = _Ctx(_EMPTY_MESSAGE, now)
            return self._error(ctx, Refusal.NOT_DER.fail, f"cannot decode request: {short_text(exc)}",
                               request="malformed")
        ctx = _Ctx(msg, now)
        try:
            ctx.auth, ctx.denial = self._checks.authenticate(msg, now, self._live)
            self._checks.check_header(msg.header, now, first=msg.body_type in NEW_REQUESTS)
            return self._dispatch(ctx, defer, inject_error)
        except Refuse as refusal:
            if refusal.auth is not None:  # the MAC verified: the error is protected with it
                ctx.auth = refusal.auth
            return self._error(ctx, refusal.fail, refusal.text, status=refusal.status)
        except Rejected as exc:
            return self._error(ctx, exc.fail, str(exc))
        except Exception as exc:  # noqa: BLE001  # a bug or a broken store costs one answer, not the server
            return self._error(ctx, Refusal.INTERNAL.fail, "internal error",
                               detail=f"{type(exc).__name__}: {short_text(exc)}")

    def tick(self, now: float) -> list[Outcome]:
        """Expire transactions at ``now``: unconfirmed certificates are rejected (and so listed
        as revoked), hung waiting transactions closed, old closed IDs forgotten."""
        when = datetime.fromtimestamp(now, UTC)
        expired: list[Outcome] = []
        for tx in [t for t in self._live.values() if t.deadline <= now]:
            if tx.issued is not None and not tx.implicit:
                try:
                    self.backend.reject(tx.issued.serial, when)
                except FleetError:
                    pass  # revoked meanwhile: nothing to undo
            if tx.state is TxState.AWAIT_CONFIRM:
                self._counts["expired_unconfirmed"] += 1
                reason = "confirm_timeout"
            else:
                self._counts["hung_closed"] += 1
                reason = "hung"
            self._close(tx, now, reason)
            expired.append(Outcome("tick", "none", reason, Refusal.TRANSACTION_EXPIRED.fail.mask,
                                   tx.issued.serial if tx.issued else None))
        limit = now - self.config.closed_ttl
        closed = self._closed
        while closed and (next(iter(closed.values()))[0] <= limit or len(closed) > self.config.max_closed):
            closed.popitem(last=False)
        return expired

    def state_of(self, transaction_id: bytes) -> TxState | None:
        tx = self._live.get(transaction_id)
        if tx is not None:
            return tx.state
        return TxState.CLOSED if transaction_id in self._closed else None

    def statistics(self) -> ServerStatistics:
        states = [t.state for t in self._live.values()]
        return ServerStatistics(
            live=len(states),
            awaiting_confirm=states.count(TxState.AWAIT_CONFIRM),
            waiting=states.count(TxState.WAITING),
            closed_remembered=len(self._closed),
            **self._counts,
        )

    @property
    def live_transactions(self) -> int:
        return len(self._live)

    # What authenticates requests (``server_auth.Authenticator``), fixed at construction.

    @property
    def secrets(self) -> SecretLookup | None:
        return self._checks.secrets

    @property
    def trust(self) -> TrustStore:
        return self._checks.trust

    @property
    def vendor_trust(self) -> TrustStore | None:
        return self._checks.vendor_trust

    @property
    def untrusted(self) -> tuple[x509.Certificate, ...]:
        return self._checks.untrusted

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self, ctx: _Ctx, defer: float, inject_error: bool) -> Reply:
        msg = ctx.msg
        tid = msg.header.transaction_id
        assert tid is not None
        tx = self._live.get(tid)
        body_type = msg.body_type
        if tx is None:
            if tid in self._closed:
                if body_type in NEW_REQUESTS:
                    raise Refuse(Refusal.TRANSACTION_ID_IN_USE, "transactionID was used before")
                reason = self._closed[tid][1]
                if reason in ("confirm_timeout", "hung"):
                    raise Refuse(Refusal.TRANSACTION_EXPIRED, f"transaction was closed ({reason.replace('_', ' ')})")
                raise Refuse(Refusal.OUT_OF_SEQUENCE, f"{msg.label} for a closed transaction")
            handler = _TRANSITIONS[None].get(body_type)
            if handler is None:
                raise Refuse(Refusal.OUT_OF_SEQUENCE, f"{msg.label} does not start a transaction")
            if ctx.denial is not None:
                return self._deny(ctx, ctx.denial)
            limit = self.config.max_transactions
            if limit is not None and len(self._live) >= limit:
                raise Refuse(Refusal.BUSY, "too many concurrent transactions; retry later")
            bucket = self._issue_bucket
            if bucket is not None and body_type in _ISSUING and not bucket.take(ctx.now):
                raise Refuse(Refusal.BUSY, "certificate requests over the issue rate; retry later")
            if inject_error:
                raise Refuse(Refusal.INTERNAL, "injected failure (load-target knob)")
            return handler(self, ctx, defer)
        ctx.tx = tx
        if body_type in NEW_REQUESTS:
            raise Refuse(Refusal.TRANSACTION_ID_IN_USE, "transactionID belongs to a transaction in progress")
        handler = _TRANSITIONS[tx.state].get(body_type)
        if handler is None:
            raise Refuse(Refusal.OUT_OF_SEQUENCE, f"unexpected {msg.label} while {tx.state.value.replace('_', ' ')}")
        if msg.header.recip_nonce != tx.our_nonce:
            raise Refuse(Refusal.WRONG_RECIP_NONCE, "recipNonce does not echo our senderNonce")
        check_same_requester(ctx.auth, tx.auth)
        tx.nonces = fresh_nonce(tx.nonces, msg.header.sender_nonce)
        if ctx.denial is not None:
            raise Refuse(ctx.denial.fail, str(ctx.denial))
        return handler(self, ctx, 0.0)

    def _deny(self, ctx: _Ctx, denial: Rejected) -> Reply:
        """Answer a new request whose signer the records refuse, in the request's own response
        where it has a status (ip/cp/kup, rp: rejection), else with an error message (genm).
        Nothing is issued or revoked, and the transactionID is not reusable."""
        msg = ctx.msg
        body = msg.body
        if isinstance(body, CertReqMessages):
            cert_req_id = body.messages[0].cert_req_id if len(body.messages) == 1 else 0
            return self._cert_rejection(ctx, messages.RESPONSE_FOR[msg.body_type], cert_req_id, denial)
        if msg.body_type is BodyType.P10CR:
            return self._cert_rejection(ctx, BodyType.CP, -1, denial)
        if msg.body_type is BodyType.RR:
            return self._rp_rejection(ctx, denial)
        raise Refuse(denial.fail, str(denial))

    # -- new transactions -----------------------------------------------------------------

    def _on_cert_request(self, ctx: _Ctx, defer: float) -> Reply:
        msg = ctx.msg
        body = msg.body
        assert isinstance(body, CertReqMessages)
        rsp_type = messages.RESPONSE_FOR[msg.body_type]
        # RFC 9483 §4.1.1: one CertReqMsg, certReqId 0; refused in the ip/cp/kup with a status.
        if len(body.messages) != 1:
            first_id = body.messages[0].cert_req_id if body.messages else 0
            return self._cert_rejection(ctx, rsp_type, first_id, Rejected(
                f"exactly one CertReqMsg is supported, not {len(body.messages)}", Refusal.CERT_REQ_COUNT))
        req = body.messages[0]
        if req.cert_req_id != 0:
            return self._cert_rejection(ctx, rsp_type, req.cert_req_id, Rejected(
                f"certReqId must be 0, not {req.cert_req_id}", Refusal.CERT_REQ_ID))
        if msg.body_type is BodyType.KUR and ctx.auth.kind != "signature":
            raise Refuse(Refusal.NOT_SIGNED, "kur must be signed with the certificate being updated")
        try:
            template = req.template
            sealed = central = None
            if is_central_request(template.public_key, req.popo is not None):
                if self.kga is None:
                    raise Rejected("this CA does not generate keys (central key generation is off)",
                               Refusal.TEMPLATE)
                template, sealed, central = serve_central(self.kga, template, secret=ctx.auth.secret,
                                                          signer=ctx.auth.signer)
            if template.public_key is None:
                raise Rejected("certTemplate lacks a publicKey", Refusal.TEMPLATE)
            subject: x509.Name | bytes
            if template.extensions is None:
                # The usual template: the key loaded by itself, the subject left as DER for the
                # CA to check and use (a wrapping CSR and its Python Name cost more: bench/README.md).
                public_key = load_public_key(template.public_key)
                subject = template.subject if template.subject is not None else messages.NULL_DN
                extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
            else:
                csr = template_as_csr(template)
                public_key = csr_public_key(csr)
                subject = csr.subject
                extensions = csr_extensions(csr)
            self._checks.check_requested_key(public_key)
            if sealed is not None:  # a centrally generated key: the KGA made it, no POP to check
                proof = Proof(False, extensions)
            else:
                proof = prove(req, public_key, extensions, lambda: self._checks.is_pki_entity(ctx.auth)
                              or ra_verified_by(ctx.auth, self.ra_trust, self.untrusted, ctx.now))
            old_cert = self._checks.authorize_kur(ctx.auth, req.controls) if msg.body_type is BodyType.KUR else None
            if old_cert is not None:
                self._updates.check(old_cert.serial_number)
                if template.subject is None:
                    subject = old_cert.subject
            not_after = template.validity.not_after if template.validity else None
        except Rejected as exc:
            return self._cert_rejection(ctx, rsp_type, 0, exc)
        return self._issue(ctx, rsp_type, 0, public_key, subject, proof.extensions, not_after, old_cert, defer,
                           spki=template.public_key, encrypt=proof.indirect, private_key=sealed, central=central)

    def _on_ccr(self, ctx: _Ctx, defer: float) -> Reply:
        """ccr: checked by ``fleet.cmp.crosscert``, then issued and confirmed like a cr."""
        check_cross_requester(ctx.auth, self.backend)
        try:
            req = check_cross_request(ctx.msg.body, self._ca_name(), ctx.now)
        except Rejected as exc:
            return self._cert_rejection(ctx, BodyType.CCP, 0, exc)
        return self._issue(ctx, BodyType.CCP, 0, req.public_key, req.subject, req.extensions, req.not_after, None,
                           defer, spki=req.spki, not_before=req.not_before)

    def _ca_name(self) -> x509.Name:
        """The issuing CA's name (what a ccr's certTemplate names as issuer)."""
        chain = self.backend.issued_chain or (self.backend.root,)
        return x509.load_der_x509_certificate(chain[0]).subject

    def _on_p10cr(self, ctx: _Ctx, defer: float) -> Reply:
        body = ctx.msg.body
        assert isinstance(body, P10Request)
        try:
            try:
                csr = x509.load_der_x509_csr(body.csr)
                public_key = csr_public_key(csr)
                self._checks.check_requested_key(public_key)
                pop_ok = csr.is_signature_valid
            except (ValueError, TypeError) as exc:
                raise Rejected(f"unusable PKCS#10 request: {short_text(exc)}", Refusal.CSR_MALFORMED) from None
            if not pop_ok:
                raise Rejected("PKCS#10 signature (POP) does not verify", Refusal.POP)
            extensions = csr_extensions(csr)
        except Rejected as exc:
            return self._cert_rejection(ctx, BodyType.CP, -1, exc)
        return self._issue(ctx, BodyType.CP, -1, public_key, csr.subject, extensions, None, None, defer)

    def _issue(
        self, ctx: _Ctx, rsp_type: BodyType, cert_req_id: int, public_key: object, subject: x509.Name | bytes,
        extensions: tuple[x509.Extension[x509.ExtensionType], ...], not_after: datetime | None,
        old_cert: x509.Certificate | None, defer: float, *, spki: bytes | None = None, encrypt: bool = False,
        not_before: datetime | None = None,
        private_key: bytes | None = None, central: tuple[str, str] | None = None,
    ) -> Reply:
        """Issue, and answer with the certificate (encrypted to ``public_key`` for the indirect
        POP, ``fleet.cmp.pop``: its certConf is the proof, so never confirmed implicitly)."""
        msg = ctx.msg
        implicit = msg.header.implicit_confirm and self.config.grant_implicit_confirm and not encrypt
        tid = msg.header.transaction_id
        assert tid is not None
        # Delivered now, or deferred: by a pollReq at the latest hung_timeout after ``defer``.
        deadline = None if implicit else ctx.now + self.config.confirm_wait + (
            defer + self.config.hung_timeout if defer > 0 else 0.0)
        try:
            issued = self.backend.issue(IssueRequest(
                kind=msg.body_type, public_key=public_key, subject=subject, extensions=extensions,
                not_after=not_after, device_ref=ctx.auth.reference, transaction_id=tid,
                confirmed=implicit, old_cert=old_cert, spki=spki, confirm_deadline=deadline, now=ctx.now,
                not_before=not_before,
                central_key=central,
            ))
        except Rejected as exc:
            return self._cert_rejection(ctx, rsp_type, cert_req_id, exc)
        self._counts["issued"] += 1
        # Its holder's next signed message (certConf, a kur or cr) need not have it re-verified.
        chain = self.backend.issued_chain
        if self._issued_above[0] is not chain:  # parsed again only when the backend's chain changes
            self._issued_above = (chain, tuple(load_cert(c) for c in (*chain, self.backend.root)))
        self.trust.remember_issued(issued.der, self._issued_above[1])
        if implicit:
            self._counts["confirmed"] += 1
        ca_pubs: tuple[bytes, ...] = ()
        chain = self.backend.issued_chain
        if self.config.mode == "3gpp":
            chain = (*chain, self.backend.root)
        elif ctx.auth.kind == "mac" and msg.body_type is BodyType.IR:
            ca_pubs = (self.backend.root,)
        response = (CertResponse(cert_req_id, messages.ACCEPTED, issued.der, private_key=private_key) if not encrypt else CertResponse(
            cert_req_id, messages.ACCEPTED, encrypted_cert=encrypted_cert(issued.cert, issued.der, public_key)))
        body = CertRepMessage((response,), ca_pubs)
        info = self._confirm_info(ctx, implicit)
        tx = _Tx(tid, msg.body_type, TxState.CLOSED, ctx.auth, msg.header.sender, b"", 0.0,
                 cert_req_id, issued, implicit=implicit, nonces=(msg.header.sender_nonce or b"",))
        if old_cert is not None and not implicit:
            tx.updates = old_cert.serial_number
            self._updates.begin(tx.updates, issued.serial, tid)
        if old_cert is not None and implicit:
            tx.settles = old_cert.serial_number  # replaced at once: its pollReq still answered
        if defer > 0:
            return self._defer(ctx, tx, (rsp_type, body, info, chain), defer, serial=issued.serial)
        return self._deliver(ctx, tx, rsp_type, body, info, chain, serial=issued.serial)

    def _confirm_info(self, ctx: _Ctx, implicit: bool) -> tuple[InfoTypeAndValue, ...]:
        if implicit:
            return _IMPLICIT_CONFIRM_INFO
        second = math.floor(ctx.now + self.config.confirm_wait)
        cached = self._confirm_wait_info
        if cached[0] != second:  # one encoding per second, not per response
            deadline = datetime.fromtimestamp(second, UTC)
            cached = (second, (InfoTypeAndValue(oids.IT_CONFIRM_WAIT_TIME, der.generalized_time(deadline)),))
            self._confirm_wait_info = cached
        return cached[1]

    def _deliver(
        self, ctx: _Ctx, tx: _Tx, rsp_type: BodyType, body: messages.Body,
        info: tuple[InfoTypeAndValue, ...], extra: tuple[bytes, ...], *, serial: int | None = None,
    ) -> Reply:
        """Send a final response of a transaction and move it to its next state."""
        data, nonce = self._encode(ctx, rsp_type, body, info, extra)
        tx.our_nonce = nonce
        if tx.issued is not None and not tx.implicit:
            tx.state = TxState.AWAIT_CONFIRM
            tx.deadline = ctx.now + self.config.confirm_wait
            self._live[tx.tid] = tx
        else:
            self._close(tx, ctx.now, "done")
        return Reply(data, Outcome(ctx.msg.label, rsp_type.label, "accepted", serial=serial))

    def _defer(
        self, ctx: _Ctx, tx: _Tx,
        pending: tuple[BodyType, messages.Body, tuple[InfoTypeAndValue, ...], tuple[bytes, ...]],
        defer: float, *, serial: int | None = None,
    ) -> Reply:
        rsp_type = pending[0]
        waiting = PKIStatusInfo(PKIStatus.WAITING, ("response delayed; poll",))
        body: messages.Body
        if rsp_type in messages.CERT_RESPONSE_BODIES:
            body_type, body = rsp_type, CertRepMessage((CertResponse(tx.cert_req_id, waiting),))
        else:  # RFC 9483 §4.4: non-certificate responses are delayed with an error "waiting"
            body_type, body = BodyType.ERROR, ErrorMsgContent(waiting)
            tx.cert_req_id = -1
        data, nonce = self._encode(ctx, body_type, body)
        tx.our_nonce = nonce
        tx.state = TxState.WAITING
        tx.pending = pending
        tx.ready_at = ctx.now + defer
        tx.deadline = tx.ready_at + self.config.hung_timeout
        self._live[tx.tid] = tx
        return Reply(data, Outcome(ctx.msg.label, body_type.label, "waiting", serial=serial))

    def _cert_rejection(self, ctx: _Ctx, rsp_type: BodyType, cert_req_id: int, exc: Rejected) -> Reply:
        status = PKIStatusInfo(PKIStatus.REJECTION, (short_text(exc),), exc.fail_info)
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        data, _ = self._encode(ctx, rsp_type, CertRepMessage((CertResponse(cert_req_id, status),)))
        self._closed[tid] = (ctx.now, "rejected")
        return Reply(data, Outcome(ctx.msg.label, rsp_type.label, "rejection", exc.fail_info, text=short_text(exc)))

    def _on_rr(self, ctx: _Ctx, defer: float) -> Reply:
        """rr (RFC 9483 §4.2): one RevDetails whose certTemplate names the certificate by issuer
        and serialNumber; any other field it gives must match that certificate (badCertId
        otherwise: no certificate matches what the request describes), and crlEntryDetails holds
        at most one CRLReason. A refused rr revokes nothing."""
        body = ctx.msg.body
        assert isinstance(body, RevReqContent)
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        if len(body.details) != 1:  # RFC 9483 §4.2: refused in the rp, with a status
            return self._rp_rejection(ctx, Rejected(
                f"exactly one RevDetails is supported, not {len(body.details)}", Refusal.REV_DETAILS_COUNT))
        serial: int | None = None
        try:
            detail = body.details[0]
            template = detail.template
            if template.issuer is None or template.serial is None:
                raise Rejected("RevDetails must name issuer and serialNumber", Refusal.REV_FIELDS_MISSING)
            if ctx.auth.kind != "signature" and not self.config.allow_mac_rr:
                raise Rejected("rr must be signature-protected", Refusal.REV_NOT_SIGNED)
            try:
                issuer = parse_name(template.issuer)
                reason_code = single_reason(detail.crl_entry_details)
            except (DerError, ValueError) as exc:
                raise Rejected(f"malformed RevDetails: {short_text(exc)}", Refusal.REV_MALFORMED) from None
            known = self.backend.find(issuer, template.serial)
            if known is None:
                raise Rejected("certificate to revoke was not issued by this CA", Refusal.REV_CERT_ID)
            mismatch = template_mismatch(template, known.cert)
            if mismatch is not None:
                raise Rejected(f"certTemplate {mismatch} does not match the certificate named by "
                               "issuer and serialNumber", Refusal.REV_CERT_ID)
            serial = template.serial
            authorize_rr(ctx.auth, known, self._checks.is_pki_entity(ctx.auth))
            self._updates.check_revocation(template.serial)
            reason = reason_flags(reason_code)
            if reason is x509.ReasonFlags.remove_from_crl:
                if known.status != "revoked" or known.reason is not x509.ReasonFlags.certificate_hold:
                    raise Rejected("removeFromCRL needs a certificate on hold", Refusal.NOT_ON_HOLD)
                self.backend.release_hold(template.serial)
            elif known.status in ("revoked", "rejected"):
                raise Rejected("certificate is already revoked", Refusal.ALREADY_REVOKED)
            else:
                self.backend.revoke(template.serial, reason, ctx.when)
        except Rejected as exc:
            return self._rp_rejection(ctx, exc, serial)
        body_out = RevRepContent((messages.ACCEPTED,))
        tx = _Tx(tid, BodyType.RR, TxState.CLOSED, ctx.auth, ctx.msg.header.sender, b"", 0.0, -1)
        if defer > 0:
            signer = ctx.auth.signer
            if signer is not None and signer.serial_number == serial and signer.issuer == issuer:
                tx.settles = serial  # it revoked itself: its pollReq is still answered
            return self._defer(ctx, tx, (BodyType.RP, body_out, (), ()), defer, serial=serial)
        data, _ = self._encode(ctx, BodyType.RP, body_out)
        self._closed[tid] = (ctx.now, "done")
        return Reply(data, Outcome("rr", "rp", "accepted", None, serial))

    def _rp_rejection(self, ctx: _Ctx, exc: Rejected, serial: int | None = None) -> Reply:
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        status = PKIStatusInfo(PKIStatus.REJECTION, (short_text(exc),), exc.fail_info)
        data, _ = self._encode(ctx, BodyType.RP, RevRepContent((status,)))
        self._closed[tid] = (ctx.now, "rejected")
        return Reply(data, Outcome("rr", "rp", "rejection", exc.fail_info, serial, text=short_text(exc)))

    def _on_genm(self, ctx: _Ctx, defer: float) -> Reply:
        body = ctx.msg.body
        assert isinstance(body, GenMsgContent)
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        try:
            items = tuple(self.backend.general_info(item) for item in body.items)
        except (DerError, ValueError) as exc:
            raise Refuse(Refusal.GENM_MALFORMED, f"malformed genm value: {short_text(exc)}") from None
        tx = _Tx(tid, BodyType.GENM, TxState.CLOSED, ctx.auth, ctx.msg.header.sender, b"", 0.0, -1)
        if defer > 0:
            return self._defer(ctx, tx, (BodyType.GENP, GenMsgContent(items), (), ()), defer)
        data, _ = self._encode(ctx, BodyType.GENP, GenMsgContent(items))
        self._closed[tid] = (ctx.now, "done")
        return Reply(data, Outcome("genm", "genp", "accepted"))

    # -- follow-ups -----------------------------------------------------------------------

    def _on_cert_conf(self, ctx: _Ctx, defer: float) -> Reply:
        tx = ctx.tx
        assert tx is not None and tx.issued is not None
        body = ctx.msg.body
        assert isinstance(body, CertConfirmContent)
        serial = tx.issued.serial
        if len(body.statuses) > 1:
            raise Refuse(Refusal.CERT_STATUS_COUNT, "certConf holds more than one CertStatus")
        accepted = False
        if body.statuses:
            status = body.statuses[0]
            if status.cert_req_id != tx.cert_req_id:
                raise Refuse(Refusal.CERT_STATUS_ID,
                              f"certConf certReqId {status.cert_req_id}, expected {tx.cert_req_id}")
            if not hmac.compare_digest(status.cert_hash, cert_hash(tx.issued, status.hash_alg)):
                self.backend.reject(serial, ctx.when)
                self._close(tx, ctx.now, "rejected")
                raise Refuse(Refusal.CERT_HASH, "certHash does not match the certificate issued")
            accepted = check_cert_status(status.status_info)
        # An empty certConf rejects every certificate (RFC 9810 §5.3.18).
        if accepted:
            self.backend.confirm(serial)
            self._counts["confirmed"] += 1
        else:
            self.backend.reject(serial, ctx.when)
        data, _ = self._encode(ctx, BodyType.PKICONF, PKIConfirmContent())
        self._close(tx, ctx.now, "done")
        return Reply(data, Outcome("certConf", "pkiconf", "accepted" if accepted else "rejection", serial=serial))

    def _on_poll_req(self, ctx: _Ctx, defer: float) -> Reply:
        tx = ctx.tx
        assert tx is not None and tx.pending is not None
        body = ctx.msg.body
        assert isinstance(body, PollReqContent)
        if body.cert_req_ids != (tx.cert_req_id,):
            raise Refuse(Refusal.POLL_ID, f"pollReq must name certReqId {tx.cert_req_id}")
        tx.deadline = max(tx.ready_at, ctx.now) + self.config.hung_timeout
        if ctx.now < tx.ready_at:
            check_after = max(1, math.ceil(tx.ready_at - ctx.now))
            data, nonce = self._encode(
                ctx, BodyType.POLLREP, PollRepContent((PollRepEntry(tx.cert_req_id, check_after),))
            )
            tx.our_nonce = nonce
            return Reply(data, Outcome("pollReq", "pollRep", "waiting"))
        rsp_type, rsp_body, info, extra = tx.pending
        tx.pending = None
        if not tx.implicit and tx.issued is not None:
            info = self._confirm_info(ctx, False)  # the confirm deadline runs from delivery
        reply = self._deliver(ctx, tx, rsp_type, rsp_body, info, extra,
                              serial=tx.issued.serial if tx.issued else None)
        return Reply(reply.data, Outcome("pollReq", rsp_type.label, "accepted", serial=reply.outcome.serial))

    def _on_client_error(self, ctx: _Ctx, defer: float) -> Reply:
        """The end entity gave up (error message): reject what it was given, close, pkiConf."""
        tx = ctx.tx
        assert tx is not None
        if tx.issued is not None and not tx.implicit:
            self.backend.reject(tx.issued.serial, ctx.when)
        data, _ = self._encode(ctx, BodyType.PKICONF, PKIConfirmContent())
        self._close(tx, ctx.now, "client_error")
        return Reply(data, Outcome("error", "pkiconf", "accepted"))

    # -- encoding -------------------------------------------------------------------------

    def _encode(
        self, ctx: _Ctx, body_type: BodyType, body: messages.Body,
        info: tuple[InfoTypeAndValue, ...] = (), extra: tuple[bytes, ...] = (),
    ) -> tuple[bytes, bytes]:
        """Encode and protect a response to ``ctx``'s request; returns (bytes, our senderNonce)."""
        h = ctx.msg.header
        return self._writer.write(h, ctx.auth, ctx.now, body_type, body, info, extra, response_pvno(h.pvno, body))

    def _error(
        self, ctx: _Ctx, fail: FailInfo | int, text: str, *, status: PKIStatus = PKIStatus.REJECTION,
        request: str | None = None, detail: str | None = None,
    ) -> Reply:
        mask = fail.mask if isinstance(fail, FailInfo) else int(fail)
        if not mask and status is PKIStatus.REJECTION:  # never an empty failInfo on a rejection
            mask = Refusal.INTERNAL.fail.mask
        body = ErrorMsgContent(PKIStatusInfo(status, (text[:200],), mask))
        data, _ = self._encode(ctx, BodyType.ERROR, body)
        return Reply(data, Outcome(request or ctx.msg.label, "error", "error", mask, text=(detail or text)[:200]))

    def _close(self, tx: _Tx, now: float, reason: str) -> None:
        if tx.updates is not None:
            self._updates.end(tx.updates, tx.issued.serial if tx.issued else None, tx.tid)
        tx.state = TxState.CLOSED
        tx.pending = None
        self._live.pop(tx.tid, None)
        self._closed[tx.tid] = (now, reason)
        self._closed.move_to_end(tx.tid)


_Handler = Callable[[CmpServer, _Ctx, float], Reply]

# state -> request body -> handler (None: no transaction with this ID yet). Anything else is
# refused: a new request on a known transactionID with transactionIdInUse, others badRequest.
_TRANSITIONS: dict[TxState | None, dict[BodyType, _Handler]] = {
    None: {
        BodyType.IR: CmpServer._on_cert_request,
        BodyType.CR: CmpServer._on_cert_request,
        BodyType.KUR: CmpServer._on_cert_request,
        BodyType.P10CR: CmpServer._on_p10cr,
        BodyType.CCR: CmpServer._on_ccr,
        BodyType.RR: CmpServer._on_rr,
        BodyType.GENM: CmpServer._on_genm,
    },
    TxState.AWAIT_CONFIRM: {
        BodyType.CERTCONF: CmpServer._on_cert_conf,
        BodyType.ERROR: CmpServer._on_client_error,
    },
    TxState.WAITING: {
        BodyType.POLLREQ: CmpServer._on_poll_req,
        BodyType.ERROR: CmpServer._on_client_error,
    },
    TxState.CLOSED: {},
}


# ---------------------------------------------------------------------------------------------
# Helpers

_IMPLICIT_CONFIRM_INFO = (InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),)

_EMPTY_MESSAGE = PKIMessage(
    PKIHeader(sender=messages.NULL_DN_GENERAL_NAME, recipient=messages.NULL_DN_GENERAL_NAME),
    BodyType.ERROR,
    ErrorMsgContent(messages.ACCEPTED),
)
