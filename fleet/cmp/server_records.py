"""What one request to the server role came to (``Outcome``, with its ``Reply``), and the
server's counts (``ServerStatistics``): plain records, re-exported by ``fleet.cmp.server``."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.cmp import messages
from fleet.records import record

__all__ = ["Outcome", "Reply", "ServerStatistics"]


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

