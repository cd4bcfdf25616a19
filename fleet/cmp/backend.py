"""The contract between the CMP server role and the CA behind it.

``CmpServer`` (``fleet.cmp.server``) checks protocol and protection; everything that needs the
CA's keys or records it asks of a ``CaBackend``: issue a certificate for a checked
``IssueRequest``, confirm, reject or revoke one, find one by issuer and serial, say where a
signer certificate stands (``CertState``) and answer genm items. ``fleet.ca.authority`` is the
implementation. A backend refuses with ``Rejected`` and one ``FailInfo``; any other exception
is a server failure (systemFailure).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509

from fleet.cmp.messages import BodyType, FailInfo, InfoTypeAndValue
from fleet.cmp.refusals import Refusal
from fleet.errors import FleetError
from fleet.records import record

__all__ = ["CaBackend", "CertState", "IssueRequest", "IssuedLike", "KnownCert", "Rejected"]


class Rejected(FleetError):
    """The CA refuses a request with one ``FailInfo``; ``fail_info`` is its bit mask."""

    def __init__(self, message: str, fail: FailInfo | Refusal = FailInfo.badRequest) -> None:
        super().__init__(message)
        if isinstance(fail, Refusal):  # the server's own refusals go through its one table
            fail = fail.fail
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
    not_before: datetime | None = None  # ccr: the validity's requested start (cross certificate)
    # Central key generation: (key type, delivery) for the records; the CA never sees the key.
    central_key: tuple[str, str] | None = None


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
    """What the server needs of an issued certificate (``fleet.ca.issuance.IssuedCert``)."""

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
