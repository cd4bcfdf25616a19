"""The CA/RA side of CMP, without I/O (the server role of ``fleet.cmp.client``, in the manner of h11).

``CmpServer.handle(data, now)`` takes one request's bytes and returns a ``Reply``: the response
bytes and a small ``Outcome`` record for metrics. ``tick(now)`` expires transactions whose
certConf never came (their certificate is rejected, which CRL and OCSP list as revoked) and
transactions that hung while waiting; callers run it periodically. Nothing here reads a clock,
sleeps or touches a socket: ``fleet.ca.service`` does that.

Checks, in order (RFC 9483 §3, checklist items 13-17): DER; one authentication step for every
body (``_authenticate``): MAC with the secret the ``SecretLookup`` finds for senderKID and a
directoryName sender, or a signature by a certificate that chains to the trust anchors (vendor
(IDevID) anchors for ir only), named by sender and senderKID, and still good in the CA's records
(``CaBackend.cert_state``: not revoked, on hold, unconfirmed or replaced by a kur); pvno 2 or 3;
transactionID and a senderNonce of 16+ octets; messageTime within the allowed skew; then the
per-transaction table (``_TRANSITIONS``): a new request on a live or recently closed
transactionID is ``transactionIdInUse``, a follow-up must echo our senderNonce as recipNonce and
use the same kind of protection (and the same signer) as the request it follows. A signer the
records refuse is answered last, in the request's own response where it has a status.

Responses are protected like the request: a MAC request is answered with the same MAC algorithm
and parameters under the same secret, a signed request (and any request whose MAC could not be
verified) with the RA signer's signature, its certificate first in extraCerts with its chain, and
its SKI as senderKID.

Issuance, revocation and records live behind ``CaBackend`` (``fleet.ca.authority``), so this
module stays protocol logic only.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from fleet.cmp import der, messages, oids
from fleet.cmp.der import DerError
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
from fleet.cmp.protection import (
    HASH_OID_BY_NAME,
    Pbmac1Params,
    PbmParams,
    ProtectionError,
    SignatureProtector,
    UnsupportedAlgorithm,
    compute_mac,
    is_mac_algorithm,
    parse_algorithm,
    parse_mac_params,
    verify_signature,
)
from fleet.cmp.trust import PLACEHOLDER_SPKI as _DUMMY_SPKI  # noqa: F401  # with _csr_der: a Name's CSR
from fleet.cmp.trust import (
    SignerMismatch,
    TrustStore,
    UnsupportedKey,
    UntrustedSigner,
    check_signer_names,
    find_signer,
    load_cert,
    parse_name,
    public_key_of,
)
from fleet.errors import FleetError
from fleet.randomness import RandomPool
from fleet.records import record

__all__ = [
    "CaBackend",
    "CertState",
    "CmpServer",
    "IssueRequest",
    "KnownCert",
    "Outcome",
    "Rejected",
    "Reply",
    "SecretLookup",
    "ServerConfig",
    "ServerStatistics",
    "SharedSecrets",
    "TxState",
    "derive_device_secret",
]

ID_REG_CTRL_OLD_CERT_ID = "1.3.6.1.5.5.7.5.1.5"
_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
_NEW_REQUESTS = frozenset(
    {BodyType.IR, BodyType.CR, BodyType.KUR, BodyType.P10CR, BodyType.RR, BodyType.GENM}
)


# ---------------------------------------------------------------------------------------------
# Shared secrets


def derive_device_secret(master: bytes, reference: bytes) -> bytes:
    """The per-device MAC secret fleet's devices and CA agree on without a table.

    ``secret = lower-case hex of HMAC-SHA256(master, reference)`` as ASCII (64 octets), where
    ``reference`` is the device's senderKID octets (e.g. ``b"device-000042"``). Hex rather than
    raw bytes so the same secret can be typed into ``openssl cmp -secret pass:<hex>``.
    """
    return hmac.digest(master, reference, "sha256").hex().encode("ascii")  # one-shot: 3x hmac.new


SecretLookup = Callable[[bytes | None], bytes | None]
"""senderKID (the reference, or None when absent) -> the shared secret, or None if unknown."""


class SharedSecrets:
    """MAC secrets by reference: a table, then a master-derived secret, then a default.

    ``default`` answers requests whose reference is absent or not in ``table`` when no
    ``master`` is set (``fleet ca serve --secret`` without ``--ref``). With ``master``, every
    reference not in the table gets ``derive_device_secret(master, reference)``.
    """

    def __init__(
        self,
        table: Mapping[bytes, bytes] | None = None,
        *,
        default: bytes | None = None,
        master: bytes | None = None,
    ) -> None:
        self._table = dict(table or {})
        self._default = default
        self._master = master

    def __call__(self, reference: bytes | None) -> bytes | None:
        if reference is not None:
            secret = self._table.get(reference)
            if secret is not None:
                return secret
            if self._master is not None:
                return derive_device_secret(self._master, reference)
        return self._default

    def __repr__(self) -> str:
        return (
            f"SharedSecrets(references={len(self._table)}, default={'set' if self._default else 'none'}, "
            f"master={'set' if self._master else 'none'})"
        )


# ---------------------------------------------------------------------------------------------
# What the server asks of the CA behind it


class Rejected(FleetError):
    """The CA refuses a request with one ``FailInfo``; ``fail_info`` is its bit mask."""

    def __init__(self, message: str, fail: FailInfo = FailInfo.badRequest) -> None:
        super().__init__(message)
        self.fail = fail
        self.fail_info = fail.mask


@record
class IssueRequest:
    """A checked certificate request (POP verified, requester authorised)."""

    kind: BodyType
    public_key: object  # cryptography public key
    # The requested subject, or the DER of a Name as the request carried it (a certTemplate
    # without extensions: the CA parses it, so the server makes no Python Name for it).
    subject: x509.Name | bytes
    extensions: tuple[x509.Extension[x509.ExtensionType], ...]
    not_after: datetime | None
    device_ref: str | None
    transaction_id: bytes
    confirmed: bool  # implicit confirm granted: record as issued at once
    old_cert: x509.Certificate | None = None  # kur: the certificate being updated
    spki: bytes | None = None  # the SubjectPublicKeyInfo DER ``public_key`` was loaded from
    # When its certConf is due at the latest, in seconds since the epoch (None: implicit
    # confirm); the backend keeps it with the pending record, so a restart can reject it.
    confirm_deadline: float | None = None
    now: float | None = None  # when the request arrived (``handle``'s ``now``): the validity's start


@dataclass(frozen=True, slots=True)
class KnownCert:
    """A certificate this CA issued, as its records know it."""

    cert: x509.Certificate
    der: bytes
    status: str  # "pending", "issued", "revoked", "rejected"
    reason: x509.ReasonFlags | None = None


class CertState(enum.Enum):
    """Where a signer certificate stands in the CA's records: what the authentication step asks
    of ``CaBackend.cert_state`` for every signature-protected request."""

    FOREIGN = "foreign"  # issued by another (trusted) CA: the records cannot say, the path did
    UNKNOWN = "unknown"  # issued under this CA's name, yet not in its records
    PENDING = "pending"  # issued, its holder has not confirmed it (certConf) yet
    GOOD = "good"
    ON_HOLD = "on_hold"  # revoked with reason certificateHold: may be released (removeFromCRL)
    REVOKED = "revoked"
    REJECTED = "rejected"  # refused by its holder, or never confirmed: listed as revoked
    REPLACED = "replaced"  # superseded by a key update (kur) whose new certificate is confirmed


class IssuedLike(Protocol):
    @property
    def der(self) -> bytes: ...
    @property
    def serial(self) -> int: ...
    @property
    def cert(self) -> x509.Certificate: ...
    @property
    def signature_hash(self) -> str | None:
        """Name of the hash the certificate is signed with (None for EdDSA)."""
        ...


class CaBackend(Protocol):
    """Issuance, records and revocation behind the server role (``fleet.ca.authority``).

    Methods raise ``Rejected`` to refuse; anything else is a server failure (systemFailure).
    """

    @property
    def issued_chain(self) -> tuple[bytes, ...]:
        """CA certificates above an issued certificate, issuing CA first, root excluded."""
        ...

    @property
    def root(self) -> bytes: ...

    def issue(self, request: IssueRequest) -> IssuedLike: ...

    def confirm(self, serial: int) -> None: ...

    def reject(self, serial: int, now: datetime) -> None: ...

    def find(self, issuer: x509.Name, serial: int) -> KnownCert | None: ...

    def cert_state(self, cert: x509.Certificate) -> CertState:
        """The records' view of a certificate that signed a request (its path already verified).
        Called for every signature-protected request: an indexed look-up, no scan."""
        ...

    def revoke(self, serial: int, reason: x509.ReasonFlags | None, now: datetime) -> None: ...

    def release_hold(self, serial: int) -> None:
        """removeFromCRL: a certificate on hold (certificateHold) is valid again."""
        ...

    def general_info(self, item: InfoTypeAndValue) -> InfoTypeAndValue:
        """Answer one genm item; unknown types come back without a value."""
        ...


# ---------------------------------------------------------------------------------------------
# Configuration, results, statistics


@dataclass(frozen=True)
class ServerConfig:
    """Policy of the server role. Times are seconds.

    ``mode`` "lcmpp": caPubs (the root) only in ip to a MAC-protected ir; "3gpp" (TS 33.310
    §9.5.4.3): the operator root always goes into the ip's extraCerts, never caPubs.
    """

    mode: Literal["lcmpp", "3gpp"] = "lcmpp"
    max_time_skew: float | None = 300.0  # None: messageTime not checked
    confirm_wait: float = 60.0  # confirmWaitTime granted when implicit confirm is not
    grant_implicit_confirm: bool = True
    hung_timeout: float = 300.0  # a waiting transaction not polled for this long is closed
    closed_ttl: float = 3600.0  # closed transactionIDs stay rejected for reuse this long
    max_closed: int = 1_000_000  # ... and at most this many are remembered
    max_transactions: int | None = None  # live transactions beyond which new ones get systemUnavail
    max_iterations: int = 10_000  # PBM/PBMAC1 iteration cap (checklist item 17)
    max_rsa_bits: int = 8192  # RSA key size cap for signers and requested keys
    min_nonce_bytes: int = 16
    allow_mac_rr: bool = False  # rr must be signed by the certificate (or its key) by default
    # A certificate replaced by a confirmed kur no longer signs requests (as the conformance
    # suites expect); True lets it go on until it expires or is revoked.
    allow_replaced_signers: bool = False


class TxState(enum.Enum):
    AWAIT_CONFIRM = "await_confirm"
    WAITING = "waiting"  # delayed delivery: the response is ready at ``ready_at``
    CLOSED = "closed"


@record
class Outcome:
    """What one request came to, for metrics and logs (bounded label values)."""

    request: str  # request body label ("ir", "certConf", ...), or "malformed"
    response: str  # response body label
    status: str  # "accepted", "rejection", "waiting", "error"
    fail_info: int | None = None
    serial: int | None = None  # certificate issued or revoked by this request
    text: str = ""

    @property
    def fail_names(self) -> tuple[str, ...]:
        return messages.fail_info_names(self.fail_info)


@record
class Reply:
    data: bytes
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    live: int
    awaiting_confirm: int
    waiting: int
    closed_remembered: int
    issued: int
    confirmed: int
    expired_unconfirmed: int
    hung_closed: int


# ---------------------------------------------------------------------------------------------
# Internal records


@dataclass(slots=True)
class _Auth:
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


@dataclass(slots=True)
class _Tx:
    tid: bytes
    kind: BodyType
    state: TxState
    auth: _Auth
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


_NO_AUTH = _Auth("none")


class _Ctx:
    """One request being handled. ``when`` is ``now`` as a datetime, made only if asked for
    (the usual exchange never needs it)."""

    __slots__ = ("auth", "denial", "msg", "now", "tx")

    def __init__(self, msg: PKIMessage, now: float) -> None:
        self.msg = msg
        self.now = now
        self.auth = _NO_AUTH  # replaced, never changed in place
        self.tx: _Tx | None = None
        self.denial: Rejected | None = None  # the records refuse the signer (``_signer_denial``)

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class _Refuse(Exception):
    """Answer with an error message (internal control flow, never escapes ``handle``)."""

    def __init__(self, fail: FailInfo, text: str, status: PKIStatus = PKIStatus.REJECTION) -> None:
        super().__init__(text)
        self.fail = fail
        self.text = text
        self.status = status


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
    ) -> None:
        self.backend = backend
        self.signer = signer
        self.config = config or ServerConfig()
        self.secrets = secrets
        self.trust = trust or TrustStore()
        self.vendor_trust = vendor_trust
        self.untrusted = tuple(untrusted)
        self._random = random if random is not None else RandomPool().take
        self._signer_name = messages.directory_name(signer.sender_name)
        self._live: dict[bytes, _Tx] = {}
        self._closed: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._counts = {"issued": 0, "confirmed": 0, "expired_unconfirmed": 0, "hung_closed": 0}
        self._confirm_wait_info: tuple[int, tuple[InfoTypeAndValue, ...]] = (-1, ())

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
            msg = _decode_request(data)
        except (FleetError, ValueError, IndexError, RecursionError) as exc:
            ctx = _Ctx(_EMPTY_MESSAGE, now)
            return self._error(ctx, FailInfo.badDataFormat, f"cannot decode request: {_short(exc)}",
                               request="malformed")
        ctx = _Ctx(msg, now)
        try:
            self._authenticate(ctx)
            self._check_header(ctx)
            return self._dispatch(ctx, defer, inject_error)
        except _Refuse as refusal:
            return self._error(ctx, refusal.fail, refusal.text, status=refusal.status)
        except Rejected as exc:
            return self._error(ctx, exc.fail, str(exc))
        except Exception as exc:  # a bug or a broken store must cost one answer, not the server
            return self._error(ctx, FailInfo.systemFailure, "internal error",
                               detail=f"{type(exc).__name__}: {_short(exc)}")

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
            expired.append(Outcome("tick", "none", reason, FailInfo.systemUnavail.mask,
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

    # -- checks ---------------------------------------------------------------------------

    def _authenticate(self, ctx: _Ctx) -> None:
        """The one authentication step of every request, whatever its body (RFC 9483 §3.5).

        MAC: the secret ``secrets`` finds for senderKID verifies the MAC, and the sender is a
        directoryName (RFC 9483 §3.1; RFC 9810 §5.1.1 gives a sender that does not know its
        name the NULL-DN, still a directoryName, as OpenSSL sends it). Signature: the
        certificate matching senderKID in extraCerts verifies the signature and chains to a
        trust anchor at ``now``, and sender and senderKID name it (``check_signer_names``).
        These failures raise ``_Refuse``: an error message with badMessageCheck, "integrity
        check failed" (RFC 9810 §5.2.3): the header the protection covers does not identify
        the key that made it; badAlg for an algorithm, curve or key type fleet cannot use. Then
        the CA's records must still let the signer act (``_signer_denial``); a refusal waits in
        ``ctx.denial`` until ``_dispatch`` has checked the header and the transaction table.
        """
        msg = ctx.msg
        h = msg.header
        if msg.protection is None or h.protection_alg is None:
            raise _Refuse(FailInfo.badMessageCheck, "request is not protected")
        params = _known_mac_params.get(h.protection_alg)  # a device reuses its salt: usually here
        if params is not None or _is_mac(h.protection_alg):
            secret = self.secrets(h.sender_kid) if self.secrets is not None else None
            if secret is None:
                raise _Refuse(FailInfo.badMessageCheck, "no shared secret for this reference")
            if params is None or params.iterations > self.config.max_iterations:
                try:
                    params = _mac_params(h.protection_alg, self.config.max_iterations)
                except UnsupportedAlgorithm as exc:
                    raise _Refuse(FailInfo.badAlg, str(exc)) from None
                except ProtectionError as exc:
                    raise _Refuse(FailInfo.badMessageCheck, str(exc)) from None
            if not hmac.compare_digest(compute_mac(params, secret, msg.protected_part), msg.protection):
                raise _Refuse(FailInfo.badMessageCheck, "MAC does not verify")
            if not _is_directory_name(h.sender):
                raise _Refuse(FailInfo.badMessageCheck, "sender must be a directoryName (RFC 9483 §3.1)")
            ctx.auth = _Auth("mac", secret=secret, mac_alg=h.protection_alg, mac_params=params,
                             sender_kid=h.sender_kid)
            return
        signer = self._verified_signer(ctx)
        try:
            check_signer_names(h.sender, h.sender_kid, signer)
        except SignerMismatch as exc:
            raise _Refuse(FailInfo.badMessageCheck, str(exc)) from None
        ctx.auth = _Auth("signature", sender_kid=h.sender_kid, signer=signer,
                         signer_der=signer.public_bytes(Encoding.DER))
        ctx.denial = self._signer_denial(ctx, signer)

    def _verified_signer(self, ctx: _Ctx) -> x509.Certificate:
        """The certificate whose key made the signature, its path to an anchor verified at
        ``now``. A certificate cryptography cannot read (a duplicated extension, an unknown
        curve) is bad protection like any other, not a server failure."""
        msg = ctx.msg
        h = msg.header
        assert h.protection_alg is not None and msg.protection is not None
        try:
            signer = find_signer(msg.extra_certs, h.sender_kid)
            public_key = public_key_of(signer)
            self._check_key_size(public_key, "signer")
            verify_signature(h.protection_alg, public_key, msg.protected_part, msg.protection)
            untrusted = [load_cert(c) for c in msg.extra_certs]
        except (UnsupportedAlgorithm, UnsupportedKey, CryptographyUnsupported) as exc:
            raise _Refuse(FailInfo.badAlg, _short(exc)) from None
        except ProtectionError as exc:
            raise _Refuse(FailInfo.badMessageCheck, _short(exc)) from None
        except (ValueError, TypeError) as exc:  # unusable key in the signer certificate
            raise _Refuse(FailInfo.badMessageCheck, f"unusable signer certificate: {_short(exc)}") from None
        untrusted.extend(self.untrusted)
        try:
            self.trust.verify(signer, untrusted, at=ctx.when)
        except UntrustedSigner as exc:
            vendor = self.vendor_trust
            if vendor is None or not self._vendor_allowed(msg):
                raise _Refuse(FailInfo.signerNotTrusted, str(exc)) from None
            try:
                vendor.verify(signer, untrusted, at=ctx.when)
            except UntrustedSigner as exc2:
                raise _Refuse(FailInfo.signerNotTrusted, str(exc2)) from None
        return signer

    def _signer_denial(self, ctx: _Ctx, signer: x509.Certificate) -> Rejected | None:
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
        if state is CertState.REPLACED and self.config.allow_replaced_signers:
            return None
        msg = ctx.msg
        if msg.body_type is BodyType.RR and _names_certificate(msg.body, signer):
            return None
        tx = self._live.get(msg.header.transaction_id or b"")
        if (tx is not None and msg.body_type not in _NEW_REQUESTS and tx.settles == signer.serial_number
                and tx.auth.signer_der == ctx.auth.signer_der):
            return None
        text, fail = _DENIALS[state]
        return Rejected(text, fail)

    def _vendor_allowed(self, msg: PKIMessage) -> bool:
        """Vendor (IDevID) certificates may sign an ir and the follow-ups of its transaction."""
        if msg.body_type is BodyType.IR:
            return True
        tx = self._live.get(msg.header.transaction_id or b"")
        return tx is not None and tx.kind is BodyType.IR

    def _check_key_size(self, public_key: PublicKeyTypes, what: str) -> None:
        if _is_rsa_key(type(public_key)):
            # _is_rsa_key stands in for isinstance (an ABC check costs ~0.5 µs) and mypy cannot
            # narrow from it: the key is an RSAPublicKey here.
            bits: int = public_key.key_size  # type: ignore[union-attr]
            if not 2048 <= bits <= self.config.max_rsa_bits:
                raise _Refuse(FailInfo.badAlg, f"{what} RSA key of {bits} bits is outside "
                                               f"2048..{self.config.max_rsa_bits}")

    def _check_header(self, ctx: _Ctx) -> None:
        h = ctx.msg.header
        if h.pvno not in (2, 3):
            raise _Refuse(FailInfo.unsupportedVersion, f"pvno {h.pvno} is not supported (use 2 or 3)")
        if not h.transaction_id:
            raise _Refuse(FailInfo.badRequest, "request lacks a transactionID")
        if h.sender_nonce is None or len(h.sender_nonce) < self.config.min_nonce_bytes:
            raise _Refuse(FailInfo.badSenderNonce,
                          f"senderNonce must be at least {self.config.min_nonce_bytes} octets")
        skew = self.config.max_time_skew
        if skew is not None and h.message_time is not None and abs(_timestamp(h.message_time) - ctx.now) > skew:
            raise _Refuse(FailInfo.badTime, f"messageTime is more than {skew:g} s off")

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self, ctx: _Ctx, defer: float, inject_error: bool) -> Reply:
        msg = ctx.msg
        tid = msg.header.transaction_id
        assert tid is not None
        tx = self._live.get(tid)
        body_type = msg.body_type
        if tx is None:
            if tid in self._closed:
                if body_type in _NEW_REQUESTS:
                    raise _Refuse(FailInfo.transactionIdInUse, "transactionID was used before")
                reason = self._closed[tid][1]
                if reason in ("confirm_timeout", "hung"):
                    raise _Refuse(FailInfo.systemUnavail, f"transaction was closed ({reason.replace('_', ' ')})")
                raise _Refuse(FailInfo.badRequest, f"{msg.label} for a closed transaction")
            handler = _TRANSITIONS[None].get(body_type)
            if handler is None:
                raise _Refuse(FailInfo.badRequest, f"{msg.label} does not start a transaction")
            if ctx.denial is not None:
                return self._deny(ctx, ctx.denial)
            limit = self.config.max_transactions
            if limit is not None and len(self._live) >= limit:
                raise _Refuse(FailInfo.systemUnavail, "too many concurrent transactions; retry later")
            if inject_error:
                raise _Refuse(FailInfo.systemFailure, "injected failure (load-target knob)")
            return handler(self, ctx, defer)
        ctx.tx = tx
        if body_type in _NEW_REQUESTS:
            raise _Refuse(FailInfo.transactionIdInUse, "transactionID belongs to a transaction in progress")
        handler = _TRANSITIONS[tx.state].get(body_type)
        if handler is None:
            raise _Refuse(FailInfo.badRequest, f"unexpected {msg.label} while {tx.state.value.replace('_', ' ')}")
        if msg.header.recip_nonce != tx.our_nonce:
            raise _Refuse(FailInfo.badRecipientNonce, "recipNonce does not echo our senderNonce")
        self._check_same_requester(ctx, tx)
        if ctx.denial is not None:
            raise _Refuse(ctx.denial.fail, str(ctx.denial))
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
        raise _Refuse(denial.fail, str(denial))

    def _check_same_requester(self, ctx: _Ctx, tx: _Tx) -> None:
        auth, first = ctx.auth, tx.auth
        if auth.kind != first.kind:
            raise _Refuse(FailInfo.wrongIntegrity, "protection differs from the transaction's first request")
        if auth.kind == "mac" and not hmac.compare_digest(auth.secret or b"", first.secret or b""):
            raise _Refuse(FailInfo.notAuthorized, "MAC secret differs from the transaction's first request")
        if auth.kind == "signature" and auth.signer_der != first.signer_der:
            raise _Refuse(FailInfo.notAuthorized, "signer differs from the transaction's first request")

    # -- new transactions -----------------------------------------------------------------

    def _on_cert_request(self, ctx: _Ctx, defer: float) -> Reply:
        msg = ctx.msg
        body = msg.body
        assert isinstance(body, CertReqMessages)
        rsp_type = messages.RESPONSE_FOR[msg.body_type]
        if len(body.messages) != 1:
            raise _Refuse(FailInfo.badRequest, "exactly one CertReqMsg is supported")
        req = body.messages[0]
        if req.cert_req_id != 0:
            raise _Refuse(FailInfo.badRequest, f"certReqId must be 0, not {req.cert_req_id}")
        if msg.body_type is BodyType.KUR and ctx.auth.kind != "signature":
            raise _Refuse(FailInfo.notAuthorized, "kur must be signed with the certificate being updated")
        try:
            template = req.template
            if template.public_key is None:
                raise Rejected("certTemplate lacks a publicKey", FailInfo.badCertTemplate)
            subject: x509.Name | bytes
            if template.extensions is None:
                # The usual template: the key loaded by itself, the subject left as DER for the
                # CA to check and use (a wrapping CSR and its Python Name cost ~25 µs).
                public_key = _load_public_key(template.public_key)
                subject = template.subject if template.subject is not None else messages.NULL_DN
                extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
            else:
                csr = _template_as_csr(template)
                public_key = _public_key(csr)
                subject = csr.subject
                extensions = _extensions(csr)
            self._check_key_size_rejected(public_key)
            self._check_pop(req, public_key)
            old_cert = self._authorize_kur(ctx, req.controls) if msg.body_type is BodyType.KUR else None
            if old_cert is not None and template.subject is None:
                subject = old_cert.subject
            not_after = template.validity.not_after if template.validity else None
        except Rejected as exc:
            return self._cert_rejection(ctx, rsp_type, 0, exc)
        return self._issue(ctx, rsp_type, 0, public_key, subject, extensions, not_after, old_cert, defer,
                           spki=template.public_key)

    def _on_p10cr(self, ctx: _Ctx, defer: float) -> Reply:
        body = ctx.msg.body
        assert isinstance(body, P10Request)
        try:
            try:
                csr = x509.load_der_x509_csr(body.csr)
                public_key = _public_key(csr)
                self._check_key_size_rejected(public_key)
                pop_ok = csr.is_signature_valid
            except (ValueError, TypeError) as exc:
                raise Rejected(f"unusable PKCS#10 request: {_short(exc)}", FailInfo.badDataFormat) from None
            if not pop_ok:
                raise Rejected("PKCS#10 signature (POP) does not verify", FailInfo.badPOP)
            extensions = _extensions(csr)
        except Rejected as exc:
            return self._cert_rejection(ctx, BodyType.CP, -1, exc)
        return self._issue(ctx, BodyType.CP, -1, public_key, csr.subject, extensions, None, None, defer)

    def _issue(
        self, ctx: _Ctx, rsp_type: BodyType, cert_req_id: int, public_key: object, subject: x509.Name | bytes,
        extensions: tuple[x509.Extension[x509.ExtensionType], ...], not_after: datetime | None,
        old_cert: x509.Certificate | None, defer: float, *, spki: bytes | None = None,
    ) -> Reply:
        msg = ctx.msg
        implicit = msg.header.implicit_confirm and self.config.grant_implicit_confirm
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
            ))
        except Rejected as exc:
            return self._cert_rejection(ctx, rsp_type, cert_req_id, exc)
        self._counts["issued"] += 1
        if implicit:
            self._counts["confirmed"] += 1
        ca_pubs: tuple[bytes, ...] = ()
        chain = self.backend.issued_chain
        if self.config.mode == "3gpp":
            chain = (*chain, self.backend.root)
        elif ctx.auth.kind == "mac" and msg.body_type is BodyType.IR:
            ca_pubs = (self.backend.root,)
        body = CertRepMessage(
            (CertResponse(cert_req_id, messages.ACCEPTED, issued.der),), ca_pubs
        )
        info = self._confirm_info(ctx, implicit)
        tx = _Tx(tid, msg.body_type, TxState.CLOSED, ctx.auth, msg.header.sender, b"", 0.0,
                 cert_req_id, issued, implicit=implicit)
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
        status = PKIStatusInfo(PKIStatus.REJECTION, (_short(exc),), exc.fail_info)
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        data, _ = self._encode(ctx, rsp_type, CertRepMessage((CertResponse(cert_req_id, status),)))
        self._closed[tid] = (ctx.now, "rejected")
        return Reply(data, Outcome(ctx.msg.label, rsp_type.label, "rejection", exc.fail_info, text=_short(exc)))

    def _on_rr(self, ctx: _Ctx, defer: float) -> Reply:
        """rr (RFC 9483 §4.2): one RevDetails whose certTemplate names the certificate by issuer
        and serialNumber; any other field it gives must match that certificate (badCertId
        otherwise: no certificate matches what the request describes), and crlEntryDetails holds
        at most one CRLReason. A refused rr revokes nothing."""
        body = ctx.msg.body
        assert isinstance(body, RevReqContent)
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        if len(body.details) != 1:
            raise _Refuse(FailInfo.badRequest, "exactly one RevDetails is supported")
        serial: int | None = None
        try:
            detail = body.details[0]
            template = detail.template
            if template.issuer is None or template.serial is None:
                raise Rejected("RevDetails must name issuer and serialNumber", FailInfo.badCertId)
            if ctx.auth.kind != "signature" and not self.config.allow_mac_rr:
                raise Rejected("rr must be signed with the certificate to revoke", FailInfo.notAuthorized)
            try:
                issuer = parse_name(template.issuer)
                reason_code = _single_reason(detail.crl_entry_details)
            except (DerError, ValueError) as exc:
                raise Rejected(f"malformed RevDetails: {_short(exc)}", FailInfo.badDataFormat) from None
            known = self.backend.find(issuer, template.serial)
            if known is None:
                raise Rejected("certificate to revoke was not issued by this CA", FailInfo.badCertId)
            mismatch = _template_mismatch(template, known.cert)
            if mismatch is not None:
                raise Rejected(f"certTemplate {mismatch} does not match the certificate named by "
                               "issuer and serialNumber", FailInfo.badCertId)
            serial = template.serial
            self._authorize_rr(ctx, known)
            reason = _reason(reason_code)
            if reason is x509.ReasonFlags.remove_from_crl:
                if known.status != "revoked" or known.reason is not x509.ReasonFlags.certificate_hold:
                    raise Rejected("removeFromCRL needs a certificate on hold", FailInfo.badRequest)
                self.backend.release_hold(template.serial)
            elif known.status in ("revoked", "rejected"):
                raise Rejected("certificate is already revoked", FailInfo.certRevoked)
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
        status = PKIStatusInfo(PKIStatus.REJECTION, (_short(exc),), exc.fail_info)
        data, _ = self._encode(ctx, BodyType.RP, RevRepContent((status,)))
        self._closed[tid] = (ctx.now, "rejected")
        return Reply(data, Outcome("rr", "rp", "rejection", exc.fail_info, serial, text=_short(exc)))

    def _on_genm(self, ctx: _Ctx, defer: float) -> Reply:
        body = ctx.msg.body
        assert isinstance(body, GenMsgContent)
        tid = ctx.msg.header.transaction_id
        assert tid is not None
        try:
            items = tuple(self.backend.general_info(item) for item in body.items)
        except (DerError, ValueError) as exc:
            raise _Refuse(FailInfo.badDataFormat, f"malformed genm value: {_short(exc)}") from None
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
            raise _Refuse(FailInfo.badRequest, "certConf holds more than one CertStatus")
        accepted = False
        if body.statuses:
            status = body.statuses[0]
            if status.cert_req_id != tx.cert_req_id:
                raise _Refuse(FailInfo.badRequest,
                              f"certConf certReqId {status.cert_req_id}, expected {tx.cert_req_id}")
            if not hmac.compare_digest(status.cert_hash, _cert_hash(tx.issued, status.hash_alg)):
                self.backend.reject(serial, ctx.when)
                self._close(tx, ctx.now, "rejected")
                raise _Refuse(FailInfo.badCertId, "certHash does not match the certificate issued")
            info = status.status_info
            accepted = info is None or info.status in (PKIStatus.ACCEPTED, PKIStatus.GRANTED_WITH_MODS)
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
            raise _Refuse(FailInfo.badRequest, f"pollReq must name certReqId {tx.cert_req_id}")
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

    # -- authorization and POP ------------------------------------------------------------

    def _check_pop(self, req: messages.CertReqMsg, public_key: PublicKeyTypes) -> None:
        popo = req.popo
        if popo is None:
            raise Rejected("proof of possession is missing", FailInfo.badPOP)
        if popo.kind != "signature":
            raise Rejected(f"{popo.kind} proof of possession is not accepted", FailInfo.badPOP)
        if popo.poposk_input is not None or popo.algorithm is None or popo.signature is None:
            raise Rejected("POP must sign the CertRequest itself (no poposkInput)", FailInfo.badPOP)
        try:
            verify_signature(popo.algorithm, public_key, req.cert_request_der, popo.signature)
        except UnsupportedAlgorithm as exc:
            raise Rejected(f"POP: {exc}", FailInfo.badAlg) from None
        except ProtectionError:
            raise Rejected("POP signature does not verify with the requested key", FailInfo.badPOP) from None

    def _check_key_size_rejected(self, public_key: PublicKeyTypes) -> None:
        try:
            self._check_key_size(public_key, "requested")
        except _Refuse as refusal:
            raise Rejected(refusal.text, FailInfo.badCertTemplate) from None

    def _authorize_kur(self, ctx: _Ctx, controls: bytes | None) -> x509.Certificate:
        """kur: the certificate being updated must be ours and alive, and the request signed with
        it or with its key (RFC 9483 §4.1.3)."""
        signer = ctx.auth.signer
        assert signer is not None
        target: KnownCert | None
        old_id = _old_cert_id(controls)
        if old_id is not None:
            issuer, serial = old_id
            target = self.backend.find(issuer, serial)
        else:
            target = self.backend.find(signer.issuer, signer.serial_number)
        if target is None:
            raise Rejected("certificate to update was not issued by this CA", FailInfo.badCertId)
        if target.status in ("revoked", "rejected"):
            raise Rejected("certificate to update is revoked", FailInfo.certRevoked)
        if target.der != ctx.auth.signer_der and not _same_key(target.cert, signer):
            raise Rejected("kur is not signed with the certificate being updated", FailInfo.notAuthorized)
        return target.cert

    def _authorize_rr(self, ctx: _Ctx, target: KnownCert) -> None:
        if ctx.auth.kind == "mac":
            return  # allowed by configuration (allow_mac_rr)
        signer = ctx.auth.signer
        assert signer is not None
        if target.der == ctx.auth.signer_der:
            return
        if _same_key(target.cert, signer) and target.cert.subject == signer.subject:
            return
        raise Rejected("rr must be signed with the certificate to revoke or its key", FailInfo.notAuthorized)

    # -- encoding -------------------------------------------------------------------------

    def _encode(
        self, ctx: _Ctx, body_type: BodyType, body: messages.Body,
        info: tuple[InfoTypeAndValue, ...] = (), extra: tuple[bytes, ...] = (),
    ) -> tuple[bytes, bytes]:
        """Encode and protect a response; returns (bytes, our senderNonce).

        The same bytes as ``messages.encode_header``/``encode_body``/``assemble`` would give
        (the tests compare them), put together from parts that repeat between responses and
        are encoded once: messageTime per second, generalInfo, caPubs, extraCerts."""
        req = ctx.msg.header
        auth = ctx.auth
        nonce = self._random(16)
        mac = auth.kind == "mac"
        if mac:
            sender = _mac_sender(req.recipient) or self._signer_name
            alg, kid = auth.mac_alg, auth.sender_kid
        else:
            sender, alg, kid = self._signer_name, self.signer.algorithm, self.signer.sender_kid
        header_der = _header_der(
            sender, req.sender, messages.message_time_der(ctx.now), alg, kid, req.transaction_id, nonce, req.sender_nonce,
            _general_info_der(info) if info else b"",
        )
        if body_type is BodyType.PKICONF:
            body_der = _PKICONF_BODY  # always the same NULL
        else:
            body_der = _cert_rep_der(body_type, body) or messages.encode_body(body_type, body)
        part = der.tlv(der.SEQUENCE, header_der + body_der)
        if mac:
            assert auth.mac_params is not None and auth.secret is not None
            protection = compute_mac(auth.mac_params, auth.secret, part)
            certs = extra
        else:
            protection = self.signer.protect(part)
            certs = _signed_extra_certs(self.signer.extra_certs, extra)
        n = len(protection)
        if n < 0x7C:  # [0] { BIT STRING } with short lengths, the usual MAC or ECDSA signature
            tail = bytes((0xA0, n + 3, der.BIT_STRING, n + 1, 0)) + protection
        else:
            tail = der.explicit(0, der.bit_string(protection))
        if certs:
            tail += _extra_certs_der(certs)
        return der.tlv(der.SEQUENCE, header_der + body_der + tail), nonce

    def _error(
        self, ctx: _Ctx, fail: FailInfo | int, text: str, *, status: PKIStatus = PKIStatus.REJECTION,
        request: str | None = None, detail: str | None = None,
    ) -> Reply:
        mask = fail.mask if isinstance(fail, FailInfo) else int(fail)
        body = ErrorMsgContent(PKIStatusInfo(status, (text[:200],), mask))
        data, _ = self._encode(ctx, BodyType.ERROR, body)
        return Reply(data, Outcome(request or ctx.msg.label, "error", "error", mask, text=(detail or text)[:200]))

    def _close(self, tx: _Tx, now: float, reason: str) -> None:
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
# Response encoding from cached parts (``CmpServer._encode``)


_PVNO_2 = b"\x02\x01\x02"
def _header_der(
    sender: bytes, recipient: bytes, time_der: bytes, alg: bytes | None, kid: bytes | None,
    tid: bytes | None, nonce: bytes, recip_nonce: bytes | None, info_der: bytes,
) -> bytes:
    """``messages.encode_header`` of a response header (pvno 2, no freeText or recipKID)."""
    out = _PVNO_2 + sender + recipient + time_der + _alg_kid_der(alg, kid)
    if tid is not None:
        out += der.explicit_octets(4, tid)
    out += der.explicit_octets(5, nonce)
    if recip_nonce is not None:
        out += der.explicit_octets(6, recip_nonce)
    return der.sequence(out + info_der)


@lru_cache(maxsize=4096)
def _alg_kid_der(alg: bytes | None, kid: bytes | None) -> bytes:
    """[1] protectionAlg and [2] senderKID: a device's (its salt, its reference) or the RA
    signer's, the same in every response of a transaction and of a device's next ones."""
    out = b"" if alg is None else der.explicit(1, alg)
    return out if kid is None else out + der.explicit_octets(2, kid)


@lru_cache(maxsize=64)
def _general_info_der(info: tuple[InfoTypeAndValue, ...]) -> bytes:
    """[8] generalInfo: implicitConfirm, or confirmWaitTime (one value per second)."""
    return der.explicit(8, der.sequence(b"".join(messages.encode_info(i) for i in info)))


@lru_cache(maxsize=64)
def _extra_certs_der(certs: tuple[bytes, ...]) -> bytes:
    """[1] extraCerts: the same chain (and root) in every response of a CA."""
    return der.explicit(1, der.sequence(b"".join(certs)))


@lru_cache(maxsize=64)
def _ca_pubs_der(ca_pubs: tuple[bytes, ...]) -> bytes:
    return der.explicit(1, der.sequence(b"".join(ca_pubs)))


_ACCEPTED_DER = messages.encode_status_info(messages.ACCEPTED)


def _cert_rep_der(body_type: BodyType, body: messages.Body) -> bytes | None:
    """An ip/cp/kup carrying one accepted certificate, encoded directly; None for any other
    body (``messages.encode_body`` does those)."""
    if type(body) is not CertRepMessage or len(body.responses) != 1:
        return None
    r = body.responses[0]
    if r.status != messages.ACCEPTED or r.certificate is None or r.private_key is not None or r.rsp_info is not None:
        return None
    response = der.sequence(
        der.integer(r.cert_req_id) + _ACCEPTED_DER + der.sequence(der.explicit(0, r.certificate))
    )
    head = _ca_pubs_der(body.ca_pubs) if body.ca_pubs else b""
    return der.explicit(int(body_type), der.sequence(head + der.sequence(response)))


# ---------------------------------------------------------------------------------------------
# Reading requests: the usual ir/cr/kur and certConf by offsets, everything else by messages.decode


def _decode_request(data: bytes) -> PKIMessage:
    """``messages.decode(data)``, the same message (the tests compare them on valid and mutated
    input), read by offsets for the usual shapes: a header as ``messages.read_header_fields`` takes it,
    one CertReqMsg with a plain template and a signature POP, or one CertStatus; a MAC
    protection and no extraCerts. Anything else, errors included, is ``messages.decode``'s."""
    if type(data) is bytes and len(data) <= messages.MAX_MESSAGE_BYTES:
        try:
            msg = _read_request_fast(data)
        except (DerError, messages.MessageError, ValueError, IndexError):
            msg = None
        if msg is not None:
            return msg
    return messages.decode(data)


_read = der.read_tlv
_SEQ = der.SEQUENCE


def _read_request_fast(data: bytes) -> PKIMessage | None:
    end = len(data)
    tag, pos, cend = _read(data, 0, end)
    if tag != _SEQ or cend != end:
        return None
    header_at = pos
    tag, hcs, hce = _read(data, pos, end)
    if tag != _SEQ:
        return None
    header = messages.read_header_fields(data, hcs, hce)
    if header is None:
        return None
    body_tag, bcs, bce = _read(data, hce, end)
    if body_tag in _CERT_REQUEST_TAGS:
        body: messages.Body | None = _read_cert_req_messages(data, bcs, bce)
    elif body_tag == 0xB8:  # [24] certConf
        body = _read_cert_confirm(data, bcs, bce)
    else:
        return None
    if body is None:
        return None
    body_end = bce
    tag, pcs, pce = _read(data, bce, end)  # [0] protection, the last field (no extraCerts)
    if tag != 0xA0 or pce != end:
        return None
    tag, vcs, vce = _read(data, pcs, pce)
    if tag != der.BIT_STRING or vce != pce or vce == vcs or data[vcs] != 0:
        return None
    protected = der.tlv(_SEQ, data[header_at:body_end])
    return PKIMessage(header, _BODY_BY_TAG[body_tag], body, data[vcs + 1 : vce], (), protected)


_CERT_REQUEST_TAGS = frozenset((0xA0, 0xA2, 0xA7))  # ir, cr, kur
_BODY_BY_TAG = {0xA0: BodyType.IR, 0xA2: BodyType.CR, 0xA7: BodyType.KUR, 0xB8: BodyType.CERTCONF}


def _read_cert_req_messages(data: bytes, pos: int, end: int) -> CertReqMessages | None:
    """[n] { SEQUENCE { CertReqMsg } }: one request, certReqId 0..127, a template of subject,
    publicKey and extensions only, a signature POP without poposkInput, no regInfo."""
    tag, cs, ce = _read(data, pos, end)  # CertReqMessages
    if tag != _SEQ or ce != end:
        return None
    tag, mcs, mce = _read(data, cs, ce)  # the CertReqMsg
    if tag != _SEQ or mce != ce:
        return None
    request_at = mcs
    tag, rcs, rce = _read(data, mcs, mce)  # CertRequest
    if tag != _SEQ:
        return None
    tag, ics, ice = _read(data, rcs, rce)  # certReqId
    if tag != der.INTEGER or ice - ics != 1 or data[ics] > 0x7F:
        return None
    tag, tcs, tce = _read(data, ice, rce)  # certTemplate
    if tag != _SEQ:
        return None
    controls = None
    if tce != rce:
        _, _, controls_end = _read(data, tce, rce)
        if controls_end != rce:
            return None
        controls = data[tce:rce]
    template = _read_plain_template(data, tcs, tce)
    if template is None:
        return None
    popo_at = rce
    tag, pcs, pce = _read(data, rce, mce)  # POPOSigningKey [1]
    if tag != 0xA1 or pce != mce:
        return None
    tag, _, ace = _read(data, pcs, pce)
    if tag != _SEQ:  # also [0] poposkInput: messages.decode reads that
        return None
    tag, scs, sce = _read(data, ace, pce)
    if tag != der.BIT_STRING or sce != pce or sce == scs or data[scs] != 0:
        return None
    popo = messages.Popo("signature", data[pcs:ace], data[scs + 1 : sce], None, data[popo_at:pce])
    return CertReqMessages((
        messages.CertReqMsg(data[ics], template, popo, controls, data[request_at:rce]),
    ))


def _read_plain_template(data: bytes, pos: int, end: int) -> messages.CertTemplate | None:
    subject = public_key = extensions = None
    last = -1
    while pos < end:
        tag, cs, ce = _read(data, pos, end)
        number = tag & 0x1F
        if number <= last:
            return None
        last = number
        if tag == 0xA5:
            _, _, ice = _read(data, cs, ce)
            if ice != ce:
                return None
            subject = data[cs:ce]
        elif tag == 0xA6:
            public_key = b"\x30" + data[pos + 1 : ce]
        elif tag == 0xA9:
            extensions = b"\x30" + data[pos + 1 : ce]
        else:
            return None
        pos = ce
    return messages.CertTemplate(subject, public_key, extensions)


def _read_cert_confirm(data: bytes, pos: int, end: int) -> CertConfirmContent | None:
    """[24] { SEQUENCE { CertStatus } } with certHash, certReqId 0..127 and at most a
    PKIStatusInfo."""
    tag, cs, ce = _read(data, pos, end)
    if tag != _SEQ or ce != end or cs == ce:
        return None
    tag, scs, sce = _read(data, cs, ce)
    if tag != _SEQ or sce != ce:
        return None
    tag, hcs, hce = _read(data, scs, sce)
    if tag != der.OCTET_STRING:
        return None
    tag, ics, ice = _read(data, hce, sce)
    if tag != der.INTEGER or ice - ics != 1 or data[ics] > 0x7F:
        return None
    info = None
    if ice != sce:
        tag, _, info_end = _read(data, ice, sce)
        if tag != _SEQ or info_end != sce:
            return None
        info = _status_info(data, ice, sce)
    return CertConfirmContent((messages.CertStatus(data[hcs:hce], data[ics], info, None),))


def _status_info(data: bytes, pos: int, end: int) -> PKIStatusInfo:
    tag, cs, ce = _read(data, pos, end)
    return messages.decode_status_info(der.Tlv(data, tag, pos, cs, ce, 4))


# ---------------------------------------------------------------------------------------------
# Helpers

_IMPLICIT_CONFIRM_INFO = (InfoTypeAndValue(oids.IT_IMPLICIT_CONFIRM, der.NULL_DER),)
_PKICONF_BODY = messages.encode_body(BodyType.PKICONF, PKIConfirmContent())

_EMPTY_MESSAGE = PKIMessage(
    PKIHeader(sender=messages.NULL_DN_GENERAL_NAME, recipient=messages.NULL_DN_GENERAL_NAME),
    BodyType.ERROR,
    ErrorMsgContent(messages.ACCEPTED),
)


def _short(exc: BaseException | str) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text[:200]


def _dedupe(certs: tuple[bytes, ...]) -> tuple[bytes, ...]:
    seen: set[bytes] = set()
    out = []
    for c in certs:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return tuple(out)


@lru_cache(maxsize=64)
def _signed_extra_certs(signer_certs: tuple[bytes, ...], extra: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """extraCerts of a signed response: the signer's chain, then ``extra``, each once. The
    combinations are few (chain, chain + root), so they are worked out once."""
    return _dedupe(signer_certs + extra)


def _mac_sender(recipient: bytes) -> bytes | None:
    """For MAC responses, answer as whom the request addressed (OpenSSL checks the sender
    against its -recipient), unless that was the NULL-DN."""
    if recipient == messages.NULL_DN_GENERAL_NAME:
        return None
    return recipient if _is_directory_name(recipient) else None


@lru_cache(maxsize=4096)
def _is_directory_name(general_name: bytes) -> bool:
    """Cached: a device addresses the same CA name in every request."""
    try:
        return messages.general_name_directory(general_name) is not None
    except DerError:
        return False


def _csr_der(subject: bytes, spki: bytes, extensions: bytes | None) -> bytes:
    attrs = b""
    if extensions is not None:
        attrs = der.sequence(der.oid(_EXTENSION_REQUEST), der.set_of(extensions))
    info = der.sequence(der.integer(0), subject, spki, der.tlv(0xA0, attrs))
    return der.sequence(info, der.algorithm_identifier(oids.ECDSA_SHA256), der.bit_string(b"\x00"))


def _template_as_csr(template: messages.CertTemplate) -> x509.CertificateSigningRequest:
    """Subject, key and extensions of a CertTemplate, parsed by cryptography in one go: the
    template is wrapped in an (unsigned) PKCS#10 structure, whose signature is never checked."""
    assert template.public_key is not None
    try:
        return x509.load_der_x509_csr(
            _csr_der(template.subject or messages.NULL_DN, template.public_key, template.extensions)
        )
    except ValueError as exc:
        raise Rejected(f"unusable certTemplate: {_short(exc)}", FailInfo.badCertTemplate) from None


def _public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        return csr.public_key()
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable public key: {_short(exc)}", FailInfo.badCertTemplate) from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm
        raise Rejected(f"unsupported public key: {_short(exc)}", FailInfo.badAlg) from None


def _load_public_key(spki: bytes) -> PublicKeyTypes:
    """A SubjectPublicKeyInfo DER as a key, refused as ``_public_key`` refuses."""
    try:
        return load_der_public_key(spki)
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable public key: {_short(exc)}", FailInfo.badCertTemplate) from None
    except CryptographyUnsupported as exc:
        raise Rejected(f"unsupported public key: {_short(exc)}", FailInfo.badAlg) from None


def _extensions(csr: x509.CertificateSigningRequest) -> tuple[x509.Extension[x509.ExtensionType], ...]:
    try:
        return tuple(csr.extensions)
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable requested extensions: {_short(exc)}", FailInfo.badCertTemplate) from None
    except x509.DuplicateExtension:
        raise Rejected("duplicate requested extension", FailInfo.badCertTemplate) from None


def _old_cert_id(controls: bytes | None) -> tuple[x509.Name, int] | None:
    """The (issuer, serial) of an id-regCtrl-oldCertID control, if any."""
    if controls is None:
        return None
    try:
        for item in der.parse(controls).children():
            parts = item.children()
            if len(parts) == 2 and parts[0].as_oid() == ID_REG_CTRL_OLD_CERT_ID:
                cert_id = parts[1].children()
                issuer = messages.general_name_directory(cert_id[0].raw)
                if issuer is None:
                    raise Rejected("oldCertID issuer must be a directoryName", FailInfo.badCertId)
                return parse_name(issuer), cert_id[1].expect(der.INTEGER, "serialNumber").as_int()
    except (DerError, IndexError, ValueError) as exc:
        raise Rejected(f"malformed oldCertID: {_short(exc)}", FailInfo.badDataFormat) from None
    return None


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == b.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )


_REASON_BY_CODE = {
    0: None,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,  # releases a hold (handled apart from revocation)
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def _single_reason(crl_entry_details: bytes | None) -> int | None:
    """The CRLReason code of an rr's crlEntryDetails, None when it has none. RFC 9483 §4.2 asks
    for exactly one; none is taken as unspecified (OpenSSL sends none unless given
    -revreason), two or more are refused with badRequest, "transaction not permitted or
    supported" (RFC 9810 §5.2.3): the encoding is sound (not badDataFormat) but the CA cannot
    tell which revocation is asked for. Other entry extensions (invalidityDate) are ignored."""
    if crl_entry_details is None:
        return None
    codes = []
    for ext in der.parse(crl_entry_details).children():
        parts = ext.children()
        if parts and parts[0].as_oid() == oids.CRL_REASON:
            inner = der.parse(parts[-1].expect(der.OCTET_STRING, "extnValue").content)
            codes.append(inner.expect(der.ENUMERATED, "CRLReason").as_int())
    if len(codes) > 1:
        raise Rejected(f"crlEntryDetails holds {len(codes)} CRLReason extensions; exactly one is allowed",
                       FailInfo.badRequest)
    return codes[0] if codes else None


def _template_mismatch(template: messages.CertTemplate, cert: x509.Certificate) -> str | None:
    """The first certTemplate field of an rr, beyond issuer and serialNumber, that does not
    match ``cert`` (None when every given field does). The caller answers badCertId, "no
    certificate could be found matching the provided criteria" (RFC 9810 §5.2.3)."""
    if template.subject is not None and template.subject != cert.subject.public_bytes():
        try:
            if parse_name(template.subject) != cert.subject:
                return "subject"
        except ValueError:
            return "subject"
    if template.public_key is not None and template.public_key != cert.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    ):
        return "publicKey"
    if template.version is not None and template.version != cert.version.value:
        return "version"
    if template.signing_alg is not None:
        try:
            dotted, _ = parse_algorithm(template.signing_alg)
        except DerError:
            return "signingAlg"
        if dotted != cert.signature_algorithm_oid.dotted_string:
            return "signingAlg"
    validity = template.validity
    if validity is not None and (
        (validity.not_before is not None and validity.not_before != cert.not_valid_before_utc)
        or (validity.not_after is not None and validity.not_after != cert.not_valid_after_utc)
    ):
        return "validity"
    if template.extensions is not None:
        try:
            given = {e.raw for e in der.parse(template.extensions).children()}
        except DerError:
            return "extensions"
        if not given <= _extensions_der(cert):
            return "extensions"
    return None


def _extensions_der(cert: x509.Certificate) -> set[bytes]:
    """Each extension of ``cert`` as the DER of its Extension SEQUENCE."""
    out = set()
    for ext in cert.extensions:
        value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else ext.value.public_bytes()
        critical = der.tlv(der.BOOLEAN, b"\xff") if ext.critical else b""
        out.add(der.sequence(der.oid(ext.oid.dotted_string), critical, der.octet_string(value)))
    return out


def _names_certificate(body: messages.Body, cert: x509.Certificate) -> bool:
    """Whether an rr body's one RevDetails names ``cert`` itself by issuer and serialNumber."""
    if not isinstance(body, RevReqContent) or len(body.details) != 1:
        return False
    template = body.details[0].template
    if template.serial != cert.serial_number or template.issuer is None:
        return False
    if template.issuer == cert.issuer.public_bytes():
        return True
    try:
        return parse_name(template.issuer) == cert.issuer
    except ValueError:
        return False


# Signer states the records refuse: status text and failInfo (``CmpServer._signer_denial``).
_DENIALS: dict[CertState, tuple[str, FailInfo]] = {
    CertState.REVOKED: ("signer certificate is revoked", FailInfo.certRevoked),
    CertState.REJECTED: ("signer certificate was rejected (never confirmed)", FailInfo.certRevoked),
    CertState.ON_HOLD: ("signer certificate is on hold (revoked with certificateHold)", FailInfo.certRevoked),
    CertState.PENDING: ("signer certificate is not confirmed yet", FailInfo.notAuthorized),
    CertState.REPLACED: ("signer certificate was replaced by a key update", FailInfo.notAuthorized),
    CertState.UNKNOWN: ("signer certificate is not in this CA's records", FailInfo.signerNotTrusted),
}


def _reason(code: int | None) -> x509.ReasonFlags | None:
    if code is None:
        return None
    if code not in _REASON_BY_CODE:
        raise Rejected(f"CRLReason {code} is not a revocation reason", FailInfo.badRequest)
    return _REASON_BY_CODE[code]


@lru_cache(maxsize=64)
def _is_rsa_key(kind: type) -> bool:
    """``isinstance(key, RSAPublicKey)`` by the key's class, cached: an ABC check costs ~0.5 µs."""
    return issubclass(kind, rsa.RSAPublicKey)


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


_HASH_NAMES = {"sha1", "sha224", "sha256", "sha384", "sha512"}
_HASH_BY_DOTTED = {dotted: name for name, dotted in HASH_OID_BY_NAME.items()}


def _cert_hash(issued: IssuedLike, hash_alg: bytes | None) -> bytes:
    """certHash as the end entity computes it: hashAlg (pvno 3) or the certificate's signature
    hash; SHA-512 for EdDSA-signed certificates (RFC 9481 §2)."""
    if hash_alg is not None:
        try:
            dotted, _ = parse_algorithm(hash_alg)
        except DerError:
            raise _Refuse(FailInfo.badAlg, "malformed certConf hashAlg") from None
        name = _HASH_BY_DOTTED.get(dotted)
        if name is None:
            raise _Refuse(FailInfo.badAlg, f"unsupported certConf hashAlg {dotted}")
    else:
        algo = issued.signature_hash
        name = algo if algo in _HASH_NAMES else "sha512"
    return hashlib.new(name, issued.der).digest()
