"""The end-entity side of one CMP transaction, without I/O (in the manner of h11).

``ClientTransaction.start()`` returns the first request to send; each response goes to
``receive(data)``, which returns the next request to send (``Send``, possibly after a delay the
caller must wait, for polling) or the outcome (``Done``). It never sleeps, reads a clock for
scheduling, or touches a socket: the device loop and the CLI do that.

Every response is checked before anything in it is believed: version, transactionID, recipNonce,
protection (MAC with our secret, or a signature by a certificate chaining to the trust anchors),
body type, certReqId, status, and that the certificate is for the key we asked about.

The machine is data, as in h11: ``_TRANSITIONS`` maps (``State``, ``Event``) to the handler that
answers and the states it may lead to; a response whose event has no entry raises
``UnexpectedBody``. Handlers return what to send or the outcome, never set the state:
``_advance`` is the one place that does, from what the handler returned (``transitions()``
renders the table). The byte-level work is ``fleet.cmp.fastwire``'s.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import field, replace
from datetime import datetime
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptoUnsupported
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.cmp import der, fastwire, messages, oids
from fleet.cmp.cms import EnvelopeError, MalformedEnvelope
from fleet.cmp.errors import (
    BadVersion,
    CaPubsNotAllowed,
    CertReqIdMismatch,
    LocalProtocolError,
    MalformedMessage,
    PollingLimit,
    RecipNonceMismatch,
    RequestRejected,
    ServerError,
    TransactionIdMismatch,
    UnexpectedBody,
    UnprotectedMessage,
    UnverifiedRefusal,
    WrongPublicKey,
)
from fleet.cmp.habits import WARNINGS
from fleet.cmp.keypackage import KeyMismatch, open_key
from fleet.cmp.kga import recipient_for
from fleet.cmp.messages import (
    BodyType,
    CertConfirmContent,
    CertRepMessage,
    CertStatus,
    ErrorMsgContent,
    FailInfo,
    GenMsgContent,
    InfoTypeAndValue,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
    PollRepContent,
    PollReqContent,
    RevRepContent,
)
from fleet.cmp.protection import (
    HASH_OID_BY_NAME,
    IterationCountRefused,
    MacProtector,
    PrivateKey,
    ProtectionError,
    Protector,
    SignatureProtector,
    check_mac,
    is_mac_algorithm,
    sender_for_reference,
    verify_mac,
    verify_signature,
)
from fleet.cmp.requests import (
    CertRequest,
    CsrRequest,
    PreparedCertRequest,
    Request,
    body_der,
    operation_of,
)
from fleet.cmp.trust import (
    CertificateError,
    TrustStore,
    find_signer,
    is_self_signed,
    load_cert,
    public_key_of,
)
from fleet.errors import FleetError
from fleet.records import record


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_RESPONSE = "await_response"
    AWAIT_POLL = "await_poll"
    AWAIT_CONFIRM = "await_confirm"
    DONE = "done"
    FAILED = "failed"

    # Members are singletons: the C identity hash serves the table's lookups, not Enum's
    # hash(self._name_), a Python call per lookup.
    __hash__ = object.__hash__


class Event(enum.Enum):
    """What moves the machine: ``start()``, or the kind of a response that passed the checks."""

    __hash__ = object.__hash__  # as State's

    START = "start"
    CERT_RESPONSE = "ip|cp|kup"  # the answer to our ir, cr, p10cr or kur
    REVOCATION_RESPONSE = "rp"
    GENERAL_RESPONSE = "genp"
    POLL_REP = "pollRep"
    PKICONF = "pkiconf"
    ERROR = "error"
    OTHER = "other"  # any other body: never in the table


@record
class ClientConfig:
    """How a device protects its requests and whom it believes.

    ``mode`` "lcmpp" follows RFC 9483 (caPubs only under MAC protection); "3gpp" follows
    TS 33.310 §9.5.4.3: for an ir, a self-signed operator root in the ip's extraCerts may serve as
    the trust anchor for that response.

    ``sender`` (an encoded GeneralName) overrides the header's sender for every request; without
    it the transaction chooses one (``ClientTransaction._choose_sender``). ``max_iterations`` caps
    the iteration count of a MAC-protected response (None: the algorithm's default cap).
    """

    protector: Protector | None  # None: each transaction brings its own (a fleet's shared config)
    trust: TrustStore | None = None
    untrusted: tuple[x509.Certificate, ...] = ()
    recipient: bytes = messages.NULL_DN_GENERAL_NAME
    sender: bytes | None = None  # GeneralName; default from the protector or the request
    mode: Literal["lcmpp", "3gpp"] = "lcmpp"
    max_iterations: int | None = None
    max_polls: int = 64
    max_check_after: int = 3600
    message_time: bool = True
    accept_unprotected_errors: bool = True
    confirm_hash_alg: str | None = None  # set to use pvno 3 with hashAlg in certConf
    # A response's messageTime further than this from our clock is a warning, never a refusal.
    time_skew_warning: float = 300.0
    # Refuse (CaPubsNotAllowed) rather than ignore caPubs under signature protection: for a
    # conformance run that wants to flag a CA doing it.
    refuse_signed_ca_pubs: bool = False


@record
class Send:
    """Send ``data`` after waiting ``delay`` seconds (non-zero only for pollReq)."""

    data: bytes
    body_type: BodyType
    delay: float = 0.0


@record
class Done:
    """The transaction completed. Fields not relevant to the request stay empty."""

    status: PKIStatusInfo
    certificate: bytes | None = None  # DER of the issued certificate
    extra_certs: tuple[bytes, ...] = ()  # the response's extraCerts (chain material)
    ca_pubs: tuple[bytes, ...] = ()  # trust anchors (only when MAC-protected, LCMPP)
    operator_root: bytes | None = None  # 3GPP mode: the root taken from extraCerts
    items: tuple[InfoTypeAndValue, ...] = ()  # genp content
    implicit_confirm: bool = False
    polls: int = 0
    warnings: tuple[str, ...] = ()  # codes of ``WARNINGS``: habits accepted, each once
    # Central key generation: the delivered key, set only once every check of it passed.
    private_key: PrivateKey | None = field(default=None, repr=False)

    @property
    def chain(self) -> tuple[bytes, ...]:
        """extraCerts other than the issued certificate itself."""
        return tuple(c for c in self.extra_certs if c != self.certificate)


Step = Send | Done  # what start() and receive() return

# Habits of real CAs that fleet accepts and reports (the survey in docs/strictness.md). The codes
# are metric label values: a fixed set.
# The generalInfo items fleet knows (the id-it arc named in fleet.cmp.oids).
_KNOWN_INFO = frozenset(oids.INFO_TYPE_NAMES)

_HASH_FOR_CERT_SIG = {"sha1": "sha1", "sha224": "sha224", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}
_HASH_NEW = {name: getattr(hashlib, name) for name in _HASH_FOR_CERT_SIG}  # cheaper than hashlib.new


def cert_hash(cert_bytes: bytes, hash_name: str | None = None, cert: x509.Certificate | None = None) -> bytes:
    """certHash for certConf: the hash of the certificate's signature algorithm (RFC 9483 §4.1.1);
    SHA-512 for Ed25519 certificates (RFC 9481 §2). ``cert`` is ``cert_bytes`` already parsed."""
    if hash_name is None:
        cert = cert or load_cert(cert_bytes)
        try:
            algo = cert.signature_hash_algorithm
        except CryptoUnsupported:
            raise CertificateError(
                "cannot tell the hash of the certificate's signature algorithm for certConf"
            ) from None
        hash_name = _HASH_FOR_CERT_SIG.get(algo.name, "sha256") if algo is not None else "sha512"
    new = _HASH_NEW.get(hash_name)
    return new(cert_bytes).digest() if new is not None else hashlib.new(hash_name, cert_bytes).digest()


def _load_issued(cert_bytes: bytes) -> x509.Certificate:
    """The issued certificate, its DER structure checked by cryptography's parser.

    Not ``load_cert``: that also builds the names and extensions and caches the result, which
    suits the few CA certificates seen again and again, not one new certificate per device.
    """
    try:
        return x509.load_der_x509_certificate(cert_bytes)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise CertificateError(f"malformed certificate: {exc}") from None


def _same_key(cert_der: bytes, cert: x509.Certificate, spki: bytes) -> bool:
    """Whether the certificate is for the key whose SubjectPublicKeyInfo is ``spki``.

    Fast path: the certificate's own SPKI bytes (cryptography has already parsed the whole
    certificate) equal ours. Otherwise compare after re-encoding, which tolerates a CA that
    encodes the same key differently (a compressed EC point, say).
    """
    raw = fastwire.spki_of_certificate(cert_der)
    if raw == spki:
        return True
    return public_key_of(cert).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki


class ClientTransaction:
    """One transaction (ir/cr/kur/p10cr/rr/genm), its certConf/pkiConf and its polling."""

    def __init__(
        self,
        config: ClientConfig,
        request: Request,
        *,
        transaction_id: bytes | None = None,
        random: Callable[[int], bytes] = os.urandom,
        now: Callable[[], datetime] | None = None,
        protector: Protector | None = None,
    ) -> None:
        """``protector`` replaces ``config.protector`` for this transaction, so a fleet of devices
        that differ only in their credentials can share one ``ClientConfig``. ``now`` is the
        transaction's clock (aware datetimes): the messageTime it writes and the time a signer's
        certificates must be valid at; None: the system clock."""
        self.config = config
        chosen = protector if protector is not None else config.protector
        if chosen is None:
            raise ValueError("a transaction needs a protector: in its ClientConfig or its own")
        self.protector: Protector = chosen
        self.request: Request | None = request  # released after start(): devices wait in the thousands
        self.kind = request.kind
        self._implicit_confirm = request.implicit_confirm
        self.operation = operation_of(request)
        self.state = State.IDLE
        self.transaction_id = transaction_id or random(16)
        self._random = random
        self._now = now  # None: the system clock (messageTime, and certificate validity)
        self._last_nonce: bytes | None = None
        self._peer_nonce: bytes | None = None
        self._polls = 0
        # RFC 9810 §5.3.4 / RFC 9483 §4.4: -1 where no CertReqMsg carries an id (p10cr, rr, genm).
        self._cert_req_id = 0 if isinstance(request, (CertRequest, PreparedCertRequest)) else -1
        self._central = isinstance(request, CertRequest) and request.central_key_alg is not None
        self._requested_spki = None if self._central else self._spki_of(request)
        self._result: Done | None = None
        self._pending_error: FleetError | None = None
        self._response_was_mac = False
        self._sender_der: bytes | None = None
        self._headers: fastwire.HeaderWriter | None = None
        self._warnings: list[str] = []

    # -- public surface -------------------------------------------------------------------

    def start(self) -> Send:
        """The request to send first."""
        if (self.state, Event.START) not in _TRANSITIONS:
            raise LocalProtocolError(f"cannot do that in state {self.state.value}")
        send = self._advance(None)
        assert isinstance(send, Send)
        return send

    def receive(self, data: bytes) -> Step:
        """Check one response and return what to do next. Raises a ``CmpError`` subclass when the
        response is bad or the server refused; the transaction is then FAILED."""
        if self.state not in _RECEIVING:
            raise LocalProtocolError(f"no response expected in state {self.state.value}")
        return self._advance(data)

    def _advance(self, data: bytes | None) -> Step:
        """The one place the state changes: check the response (``data``; None for start), find
        its transition, run the handler and move to the state its output leads to, or to FAILED
        when anything raises."""
        try:
            if data is None:
                event, msg = Event.START, None
            else:
                msg = self._check(data)
                event = self._event_of(msg)
            transition = _TRANSITIONS.get((self.state, event))
            if transition is None:
                assert msg is not None  # start() checked its own event
                raise UnexpectedBody(
                    f"unexpected {msg.label} response while {self.state.value.replace('_', ' ')}"
                )
            handler, targets = transition
            step = handler(self, msg)  # type: ignore[arg-type]  # None only for START
            # What the handler's output sends says where the machine goes next.
            if type(step) is Done:
                target = State.DONE
            else:
                target = _AFTER_SENDING.get(step.body_type, State.AWAIT_RESPONSE)  # type: ignore[union-attr]
            if target not in targets:
                raise LocalProtocolError(
                    f"{event.value} in state {self.state.value} cannot lead to {target.value}"
                )
            self.state = target
            return step
        except Exception:
            self.state = State.FAILED
            raise

    @property
    def result(self) -> Done | None:
        return self._result

    def warn(self, code: str) -> None:
        """Note a habit of the peer that was accepted (a ``WARNINGS`` code), once per
        transaction; the ``Done`` carries it. Transports call it for what only they see."""
        if code not in WARNINGS:
            raise ValueError(f"unknown warning {code!r}")
        if code not in self._warnings:
            self._warnings.append(code)

    def reject_certificate(self, text: str, fail_info: FailInfo = FailInfo.systemFailure) -> Send:
        """The certConf to send instead of the accepting one ``receive`` just returned (not sent):
        it rejects the certificate, for a caller that cannot keep it (its files could not be
        stored), so the CA revokes it at once rather than hold a valid certificate nobody has.
        When the CA acknowledges with pkiConf the transaction ends in ``Done`` carrying this
        rejection as its status and no certificate."""
        self._require(State.AWAIT_CONFIRM)
        previous = self._result
        if previous is None or previous.certificate is None or self._pending_error is not None:
            raise LocalProtocolError("no accepted certificate to reject")
        status = PKIStatusInfo(PKIStatus.REJECTION, (text,), fail_info.mask)
        self._result = Done(status=status, extra_certs=previous.extra_certs, polls=previous.polls)
        return self._confirm(previous.certificate, status)

    # -- building requests ----------------------------------------------------------------

    def _header_der(self, info: tuple[InfoTypeAndValue, ...], pvno: int = 2) -> bytes:
        """The encoded PKIHeader of the next message, with a fresh senderNonce: what
        ``messages.encode_header`` writes for the same fields, by ``fastwire.HeaderWriter``."""
        self._last_nonce = nonce = self._random(16)
        headers = self._headers
        if headers is None:
            protector = self.protector
            headers = self._headers = fastwire.HeaderWriter(
                self._sender(), self.config.recipient, protector.algorithm, protector.sender_kid,
                self.transaction_id,
            )
        when: datetime | float | None = None
        if self.config.message_time:
            when = self._now() if self._now is not None else time.time()
        return headers.header(nonce, pvno=pvno, message_time=when, recip_nonce=self._peer_nonce, info=info)

    def _sender(self) -> bytes:
        """The header's sender, chosen once per transaction: every message of it (certConf and
        pollReq too, after the request is released) names the same originator, as OpenSSL does."""
        if self._sender_der is None:
            self._sender_der = self._choose_sender()
        return self._sender_der

    def _choose_sender(self) -> bytes:
        """RFC 9483 §3.1: a signed message names the protection certificate's subject; with
        MAC protection the sender identifies the shared secret, as the senderKID does, so both
        name the same entity: the protector's own sender name, else the name the reference
        spells (``sender_for_reference``). Only without a reference does the requested subject
        stand in (as in ``openssl cmp``), else the NULL-DN."""
        if self.config.sender is not None:
            return self.config.sender
        protector = self.protector
        if protector.sender_name is not None:
            return messages.directory_name(protector.sender_name)
        if protector.sender_kid:
            name = sender_for_reference(protector.sender_kid)
            # GeneralName directoryName [4]: messages.directory_name, short form written inline
            return b"\xa4" + bytes((len(name),)) + name if len(name) < 0x80 else messages.directory_name(name)
        subject_der = getattr(self.request, "subject_der", None)
        if subject_der is not None and subject_der != messages.NULL_DN:  # len(x509.Name) is not cheap
            return messages.directory_name(subject_der)
        return messages.NULL_DN_GENERAL_NAME

    def _send(
        self, body_type: BodyType, body: bytes, info: tuple[InfoTypeAndValue, ...] = (), *, delay: float = 0.0, pvno: int = 2
    ) -> Send:
        """Protect and assemble the next message around ``body`` (an encoded PKIBody)."""
        header_der = self._header_der(info, pvno)
        protector = self.protector
        protection = protector.protect(messages.protected_part(header_der, body))
        extra = protector.extra_certs if isinstance(protector, SignatureProtector) else ()
        return Send(messages.assemble(header_der, body, protection, extra), body_type, delay)

    # -- checking responses ---------------------------------------------------------------

    def _check(self, data: bytes) -> PKIMessage:
        try:
            msg = fastwire.decode(data)
        except FleetError as exc:
            raise MalformedMessage(f"malformed response: {exc}") from None
        h = msg.header
        if h.pvno not in (2, 3):
            raise BadVersion(f"response has unsupported pvno {h.pvno} (RFC 9810 §5.1.1: 2 or 3)")
        if h.transaction_id != self.transaction_id:
            raise TransactionIdMismatch("response transactionID differs from the request's (RFC 9810 §5.1.1)")
        if h.recip_nonce != self._last_nonce:
            raise RecipNonceMismatch("response recipNonce does not echo our senderNonce (RFC 9810 §5.1.1)")
        self._verify_protection(msg)
        self._peer_nonce = h.sender_nonce
        if h.message_time is not None:
            now = self._now().timestamp() if self._now is not None else time.time()
            if abs(h.message_time.timestamp() - now) > self.config.time_skew_warning:
                self.warn("message_time_skew")
        if h.general_info and any(item.oid not in _KNOWN_INFO for item in h.general_info):
            self.warn("unknown_general_info")
        return msg

    def _verify_protection(self, msg: PKIMessage) -> None:
        """Verify the protection, or raise. A refusal whose protection cannot be verified raises
        ``UnverifiedRefusal`` carrying its status (reported, never believed), not the bare
        protection error: "signer does not chain" alone hides what the CA said."""
        try:
            self._check_protection(msg)
        except ProtectionError as exc:
            status = _refusal_status(msg)
            if status is None or not self.config.accept_unprotected_errors:
                raise
            reason = str(exc)
            if not self.config.trust and not is_mac_algorithm(msg.header.protection_alg or b""):
                reason += "; no trust anchor given to check its signature (--trusted)"
            what = "server error" if msg.body_type is BodyType.ERROR else f"{msg.label}: request rejected"
            raise UnverifiedRefusal(
                f"{what} (unverified: {reason}): {_one_line(status.describe())}", status, reason
            ) from None

    def _check_protection(self, msg: PKIMessage) -> None:
        h = msg.header
        if msg.protection is None or h.protection_alg is None:
            if msg.body_type is BodyType.ERROR and self.config.accept_unprotected_errors:
                body = msg.body
                assert isinstance(body, ErrorMsgContent)
                raise ServerError(
                    f"server error (unprotected): {body.status.describe()}", body.status, protected=False
                )
            raise UnprotectedMessage(f"{msg.label} response is not protected (RFC 9483 §3.2)")
        protector = self.protector
        if isinstance(protector, MacProtector) and h.protection_alg == protector.algorithm:
            # The usual answer reuses our own MAC parameters: no need to parse them again.
            check_mac(protector.params, msg.protected_part, msg.protection, protector.secret)
            self._response_was_mac = True
            return
        if is_mac_algorithm(h.protection_alg):
            if not isinstance(protector, MacProtector):
                raise ProtectionError("MAC-protected response to a signature-protected request")
            try:
                verify_mac(
                    h.protection_alg, msg.protected_part, msg.protection, protector.secret,
                    max_iterations=self.config.max_iterations,
                )
            except IterationCountRefused as exc:
                raise IterationCountRefused(
                    f"{exc} in the response (fleet's cap against CPU abuse: raise it with"
                    " --max-iterations, or max_iterations in a profile or manifest)"
                ) from None
            self._response_was_mac = True
            return
        signer = find_signer(msg.extra_certs, h.sender_kid)
        verify_signature(h.protection_alg, public_key_of(signer), msg.protected_part, msg.protection)
        untrusted = [load_cert(c) for c in msg.extra_certs] + list(self.config.untrusted)
        trust = self.config.trust or TrustStore()
        if self.config.mode == "3gpp" and self.kind is BodyType.IR:
            roots = [c for c in untrusted if is_self_signed(c)]
            if roots:  # TS 33.310 §9.5.4.3: the operator root arrives in the ip's extraCerts
                trust = TrustStore([*trust.anchors, *roots])
        trust.verify(signer, untrusted, at=self._now() if self._now is not None else None)
        self._response_was_mac = False

    def _event_of(self, msg: PKIMessage) -> Event:
        if msg.body_type is messages.RESPONSE_FOR[self.kind]:
            return _RESPONSE_EVENT[msg.body_type]
        return _EVENT_BY_BODY.get(msg.body_type, Event.OTHER)

    # -- transitions: each returns what to send or the outcome; _advance sets the state ----

    def _on_start(self, msg: None) -> Send:
        info: list[InfoTypeAndValue] = []
        request = self.request
        assert request is not None
        if request.implicit_confirm:
            info.append(InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER))
        if request.cert_profile:
            profile = der.sequence(der.utf8_string(request.cert_profile))
            info.append(InfoTypeAndValue(oids.IT_CERT_PROFILE, profile))
        send = self._send(request.kind, body_der(request), tuple(info))
        self.request = None
        return send

    def _on_cert_response(self, msg: PKIMessage) -> Step:
        body = msg.body
        assert isinstance(body, CertRepMessage)
        if len(body.responses) != 1:
            raise UnexpectedBody(f"{msg.label} holds {len(body.responses)} responses, expected 1")
        response = body.responses[0]
        if response.cert_req_id != self._cert_req_id:
            raise CertReqIdMismatch(f"{msg.label} certReqId {response.cert_req_id}, expected {self._cert_req_id} (RFC 9483 §4.1.1)")
        status = response.status
        if status.status == PKIStatus.WAITING:
            return self._poll(0)
        if status.status not in (PKIStatus.ACCEPTED, PKIStatus.GRANTED_WITH_MODS):
            raise RequestRejected(f"{msg.label}: request rejected: {status.describe()}", status)
        if response.certificate is None:
            raise UnexpectedBody(f"{msg.label} accepted but carries no certificate")
        ca_pubs = body.ca_pubs
        if ca_pubs and not self._response_was_mac:
            # RFC 9483 §4.1.1 lets caPubs be trusted under MAC protection only; CAs commonly
            # send their chain anyway. The certificate is good; the caPubs are dropped here so
            # that no caller can take them as trust anchors.
            if self.config.refuse_signed_ca_pubs:
                raise CaPubsNotAllowed(f"{msg.label} carries caPubs without MAC protection (RFC 9483 §4.1.1)")
            ca_pubs = ()
            self.warn("capubs_ignored")
        operator_root = None
        if self.config.mode == "3gpp":
            operator_root = next((c for c in msg.extra_certs if is_self_signed(load_cert(c))), None)
        result = Done(
            status=status,
            certificate=response.certificate,
            extra_certs=msg.extra_certs,
            ca_pubs=ca_pubs,
            operator_root=operator_root,
            implicit_confirm=msg.header.implicit_confirm,
            polls=self._polls,
        )
        cert = _load_issued(response.certificate)  # raises CertificateError when malformed
        if self._requested_spki is not None and not _same_key(response.certificate, cert, self._requested_spki):
            # Tell the CA we refuse it (so it can revoke), then fail once it acknowledges.
            self._pending_error = WrongPublicKey("issued certificate is for a different public key")
            return self._confirm(response.certificate, PKIStatusInfo(
                PKIStatus.REJECTION, ("certificate public key differs from the requested key",),
                FailInfo.badCertTemplate.mask,
            ), cert)
        if self._central:
            try:
                result = replace(result, private_key=self._delivered_key(response.private_key, cert, msg, body))
            except EnvelopeError as exc:
                if self._implicit_confirm and result.implicit_confirm:
                    raise  # nothing left to tell the CA
                self._pending_error = exc
                fail = FailInfo.badDataFormat if isinstance(exc, MalformedEnvelope) else (
                    FailInfo.badCertTemplate if isinstance(exc, KeyMismatch) else FailInfo.badMessageCheck)
                return self._confirm(response.certificate, PKIStatusInfo(
                    PKIStatus.REJECTION, (_one_line(str(exc))[:200],), fail.mask), cert)
        if self._implicit_confirm and result.implicit_confirm:
            return self._finish(result)
        self._result = result
        return self._confirm(response.certificate, None, cert)

    def _delivered_key(
        self, encrypted: bytes | None, cert: x509.Certificate, msg: PKIMessage, body: CertRepMessage
    ) -> PrivateKey:
        """The centrally generated key (RFC 9483 §4.1.6), opened with what protected our request
        and checked (``keypackage.open_key``). The KGA's certificate must chain to our trust
        anchors, or to caPubs of a response MAC-protected with our own secret."""
        if encrypted is None:
            raise MalformedEnvelope(f"{msg.label} carries no privateKey for the centrally generated key")
        trust = self.config.trust or TrustStore()
        extra = list(body.ca_pubs) if self._response_was_mac else []
        if self.config.mode == "3gpp":
            extra += [c for c in msg.extra_certs if is_self_signed(load_cert(c))]
        known = {a.public_bytes(Encoding.DER) for a in trust.anchors}
        if any(c not in known for c in extra):  # else keep the configured store and its path cache
            trust = TrustStore([*trust.anchors, *map(load_cert, extra)])
        untrusted = [load_cert(c) for c in msg.extra_certs] + list(self.config.untrusted)
        return open_key(encrypted, recipient_for(self.protector), trust=trust,
                        untrusted=untrusted, issued=cert, at=self._now() if self._now is not None else None)

    def _confirm(self, certificate: bytes, status: PKIStatusInfo | None, cert: x509.Certificate | None = None) -> Send:
        hash_name = self.config.confirm_hash_alg
        pvno = 3 if hash_name else 2
        hash_alg = der.algorithm_identifier(HASH_OID_BY_NAME[hash_name]) if hash_name else None
        body = CertConfirmContent(
            (CertStatus(cert_hash(certificate, hash_name, cert), self._cert_req_id, status, hash_alg),)
        )
        return self._send(BodyType.CERTCONF, messages.encode_body(BodyType.CERTCONF, body), pvno=pvno)

    def _on_pkiconf(self, msg: PKIMessage) -> Step:
        if self._pending_error is not None:
            raise self._pending_error
        assert self._result is not None
        return self._finish(self._result)

    def _on_rp(self, msg: PKIMessage) -> Step:
        body = msg.body
        assert isinstance(body, RevRepContent)
        if len(body.statuses) != 1:
            raise UnexpectedBody(f"rp holds {len(body.statuses)} statuses, expected 1")
        status = body.statuses[0]
        if status.status == PKIStatus.WAITING:
            return self._poll(0)
        if status.status not in (PKIStatus.ACCEPTED, PKIStatus.GRANTED_WITH_MODS):
            raise RequestRejected(f"rp: revocation rejected: {status.describe()}", status)
        return self._finish(Done(status=status, extra_certs=msg.extra_certs, polls=self._polls))

    def _on_genp(self, msg: PKIMessage) -> Step:
        body = msg.body
        assert isinstance(body, GenMsgContent)
        return self._finish(
            Done(status=messages.ACCEPTED, items=body.items, extra_certs=msg.extra_certs, polls=self._polls)
        )

    def _on_error_or_waiting(self, msg: PKIMessage) -> Step:
        body = msg.body
        assert isinstance(body, ErrorMsgContent)
        if body.status.status == PKIStatus.WAITING:
            return self._poll(0)  # RFC 9483 §4.4: delayed delivery of non-certificate responses
        return self._on_error(msg)

    def _on_error(self, msg: PKIMessage) -> Step:
        body = msg.body
        assert isinstance(body, ErrorMsgContent)
        if self._pending_error is not None:
            # We refused the certificate in certConf; a CA may answer that with an error, but the
            # transaction failed because of the certificate, and that is what the caller must see.
            raise self._pending_error
        raise ServerError(f"server error: {body.status.describe()}", body.status)

    def _on_pollrep(self, msg: PKIMessage) -> Step:
        body = msg.body
        assert isinstance(body, PollRepContent)
        if len(body.entries) != 1 or body.entries[0].cert_req_id != self._cert_req_id:
            raise CertReqIdMismatch("pollRep does not answer our certReqId (RFC 9483 §4.4)")
        check_after = body.entries[0].check_after
        if not 0 <= check_after <= self.config.max_check_after:
            raise PollingLimit(f"pollRep checkAfter {check_after} s is outside 0..{self.config.max_check_after}")
        return self._poll(check_after)

    def _poll(self, delay: float) -> Send:
        self._polls += 1
        if self._polls > self.config.max_polls:
            raise PollingLimit(f"still waiting after {self.config.max_polls} polls")
        body = PollReqContent((self._cert_req_id,))
        return self._send(BodyType.POLLREQ, messages.encode_body(BodyType.POLLREQ, body), delay=delay)

    def _finish(self, result: Done) -> Done:
        if self._warnings:
            result = dataclasses.replace(result, warnings=tuple(self._warnings))
        self._result = result
        return result

    # -- helpers --------------------------------------------------------------------------

    def _require(self, state: State) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot do that in state {self.state.value}")

    @staticmethod
    def _spki_of(request: Request) -> bytes | None:
        if isinstance(request, (CertRequest, PreparedCertRequest)):
            return request.spki
        if isinstance(request, CsrRequest):
            return request.csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return None


def _refusal_status(msg: PKIMessage) -> PKIStatusInfo | None:
    """The status of a message that refuses: an error message, or an ip/cp/kup/rp whose every
    status is a rejection. None for anything else (those must verify or fail as they are)."""
    body = msg.body
    if isinstance(body, ErrorMsgContent):
        statuses: tuple[PKIStatusInfo, ...] = (body.status,)
    elif isinstance(body, CertRepMessage):
        statuses = tuple(r.status for r in body.responses)
    elif isinstance(body, RevRepContent):
        statuses = body.statuses
    else:
        return None
    if not statuses or any(s.status != PKIStatus.REJECTION for s in statuses):
        return None
    return statuses[0]


def _one_line(text: str) -> str:
    """A peer's text on one printable line (it may hold newlines or control characters)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


_EVENT_BY_BODY = {
    BodyType.ERROR: Event.ERROR,
    BodyType.POLLREP: Event.POLL_REP,
    BodyType.PKICONF: Event.PKICONF,
}
# The answers to our own request (RESPONSE_FOR of its kind) by body type.
_RESPONSE_EVENT = {
    BodyType.IP: Event.CERT_RESPONSE,
    BodyType.CP: Event.CERT_RESPONSE,
    BodyType.KUP: Event.CERT_RESPONSE,
    BodyType.RP: Event.REVOCATION_RESPONSE,
    BodyType.GENP: Event.GENERAL_RESPONSE,
}


class Transition(NamedTuple):
    """What an event does in a state: the handler that answers it, and the states the handler's
    output may lead to (FAILED, when it raises, is always possible)."""

    handler: Callable[[ClientTransaction, PKIMessage], Step]
    targets: frozenset[State]


def _to(*states: State) -> frozenset[State]:
    return frozenset(states)


_T = ClientTransaction
_CERT_RESPONSE = Transition(
    _T._on_cert_response, _to(State.AWAIT_CONFIRM, State.AWAIT_POLL, State.DONE)
)
_REVOCATION_RESPONSE = Transition(_T._on_rp, _to(State.AWAIT_POLL, State.DONE))
_GENERAL_RESPONSE = Transition(_T._on_genp, _to(State.DONE))
_ERROR = Transition(_T._on_error, _to())  # FAILED only

# (state, event) -> transition. Any response not listed is an UnexpectedBody.
_TRANSITIONS: dict[tuple[State, Event], Transition] = {
    (State.IDLE, Event.START): Transition(_T._on_start, _to(State.AWAIT_RESPONSE)),  # type: ignore[arg-type]
    (State.AWAIT_RESPONSE, Event.CERT_RESPONSE): _CERT_RESPONSE,
    (State.AWAIT_RESPONSE, Event.REVOCATION_RESPONSE): _REVOCATION_RESPONSE,
    (State.AWAIT_RESPONSE, Event.GENERAL_RESPONSE): _GENERAL_RESPONSE,
    (State.AWAIT_RESPONSE, Event.ERROR): Transition(_T._on_error_or_waiting, _to(State.AWAIT_POLL)),
    (State.AWAIT_POLL, Event.CERT_RESPONSE): _CERT_RESPONSE,
    (State.AWAIT_POLL, Event.REVOCATION_RESPONSE): _REVOCATION_RESPONSE,
    (State.AWAIT_POLL, Event.GENERAL_RESPONSE): _GENERAL_RESPONSE,
    (State.AWAIT_POLL, Event.POLL_REP): Transition(_T._on_pollrep, _to(State.AWAIT_POLL)),
    (State.AWAIT_POLL, Event.ERROR): _ERROR,
    (State.AWAIT_CONFIRM, Event.PKICONF): Transition(_T._on_pkiconf, _to(State.DONE)),
    (State.AWAIT_CONFIRM, Event.ERROR): _ERROR,
}
_RECEIVING = frozenset(state for state, event in _TRANSITIONS if event is not Event.START)

# The state after sending: certConf awaits pkiConf, pollReq a poll answer, a request its response.
_AFTER_SENDING = {BodyType.CERTCONF: State.AWAIT_CONFIRM, BodyType.POLLREQ: State.AWAIT_POLL}


def transitions(style: Literal["text", "dot"] = "text") -> str:
    """The transition table rendered as text (one ``state --event--> targets`` line per entry) or
    as a Graphviz digraph, from ``_TRANSITIONS`` itself: the documentation cannot drift from it."""
    rows = sorted(
        ((state, event, sorted(t.targets | {State.FAILED}, key=_STATE_ORDER.index))
         for (state, event), t in _TRANSITIONS.items()),
        key=lambda row: (_STATE_ORDER.index(row[0]), _EVENT_ORDER.index(row[1])),
    )
    if style == "text":
        return "".join(
            f"{state.value} --{event.value}--> {' | '.join(t.value for t in targets)}\n"
            for state, event, targets in rows
        )
    if style != "dot":
        raise ValueError(f"unknown style {style!r}: text or dot")
    lines = ["digraph cmp_client {"]
    for state, event, targets in rows:
        for target in targets:
            if target is not State.FAILED:
                lines.append(f'  {state.value} -> {target.value} [label="{event.value}"];')
    lines.append("  // every transition leads to failed when its handler raises")
    lines.append("}")
    return "\n".join(lines) + "\n"


_STATE_ORDER = list(State)
_EVENT_ORDER = list(Event)
