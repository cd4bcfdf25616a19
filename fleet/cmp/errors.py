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
