"""Typed CMP errors. Each has a short, bounded ``kind`` used as a metric label and in reports."""

from __future__ import annotations

from fleet.errors import FleetError


class CmpError(FleetError):
    """A CMP-level problem; ``kind`` is a stable, low-cardinality name for it."""

    kind = "cmp_error"


class LocalProtocolError(CmpError):
    """The caller drove a state machine through a move its table does not allow."""

    kind = "local_protocol_error"


class MalformedMessage(CmpError):
    """The peer's bytes are not a CMP message we can read."""

    kind = "malformed"


class BadVersion(CmpError):
    kind = "unsupported_version"


class TransactionIdMismatch(CmpError):
    kind = "wrong_transaction_id"


class RecipNonceMismatch(CmpError):
    kind = "wrong_recip_nonce"


class UnprotectedMessage(CmpError):
    kind = "unprotected"


class UnexpectedBody(CmpError):
    kind = "unexpected_body"


class CertReqIdMismatch(CmpError):
    kind = "wrong_cert_req_id"


class WrongPublicKey(CmpError):
    """The issued certificate is for another key than the one requested."""

    kind = "wrong_public_key"


class CaPubsNotAllowed(CmpError):
    """caPubs in a response not MAC-protected with our secret (RFC 9483 §4.1.1)."""

    kind = "capubs_not_allowed"


class PollingLimit(CmpError):
    kind = "poll_limit"


class StatusError(CmpError):
    """The peer answered with a PKIStatusInfo that is not success: a rejection or an error body.

    ``status`` is the PKIStatusInfo; ``fail_names`` its failInfo bit names.
    """

    kind = "rejected"

    def __init__(self, message: str, status: object) -> None:
        super().__init__(message)
        self.status = status

    @property
    def fail_names(self) -> tuple[str, ...]:
        return getattr(self.status, "fail_names", ())


class RequestRejected(StatusError):
    """A certificate, revocation or confirmation response with status rejection."""

    kind = "rejected"


class ServerError(StatusError):
    """The peer sent an error message body."""

    kind = "error_message"

    def __init__(self, message: str, status: object, *, protected: bool = True) -> None:
        super().__init__(message, status)
        self.protected = protected


class UnverifiedRefusal(StatusError):
    """The peer refused (an error message, or a rejection status) but its protection could not be
    verified: no trust anchor, a signer that does not chain, a MAC that does not match. The status
    is reported, marked unverified, because it is the best clue the user has (a wrong secret is
    usually answered with a signed error the client cannot check); nothing in the message is
    believed and no certificate is taken from it. ``reason`` says why it could not be verified."""

    kind = "unverified_refusal"

    def __init__(self, message: str, status: object, reason: str) -> None:
        super().__init__(message, status)
        self.reason = reason
