"""``[announcements]``: a run's devices receive what the CA pushes, and the run makes it push.

Each worker listens for announcements (RFC 9810 §5.3.13-5.3.16 over HTTP POST, RFC 6712 §3.7 /
RFC 9811) on one HTTP port, its devices addressed by path; the embedded CA is told each device's
URL. ``revoke_fraction`` of the certificates the run is issued are revoked ``revoke_after``
seconds later by an rr from a PKI management entity (RFC 9483 §5.3.2), so revocations are pushed
while the load goes on; a device that believes a rann of its certificate re-enrolls
(``reenroll``), a ckuann changes the worker's trust anchors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["REVOCATION_REASONS", "AnnouncementLoad"]

# CRLReason names an rr may give (RFC 5280 §5.3.1), with their codes.
REVOCATION_REASONS = {"unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3, "superseded": 4,
                      "cessationOfOperation": 5}


@dataclass(frozen=True)
class AnnouncementLoad:
    """The ``[announcements]`` section (module doc). ``port`` 0 takes a free port per worker;
    N puts worker w on N + w (a CA elsewhere is configured with those). ``cert``/``key`` are the
    revoking PKI entity's credential (its certificate carries id-kp-cmcRA); without them, against
    the embedded CA, one made for the run. ``linger`` bounds the wait, after the arrivals end,
    for revocations still to be announced and re-enrollments still running."""

    revoke_fraction: float = 0.0
    revoke_after: float = 0.5
    reason: str = "keyCompromise"
    reenroll: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    linger: float = 5.0
    cert: Path | None = None
    key: Path | None = None

    @property
    def reason_code(self) -> int:
        return REVOCATION_REASONS[self.reason]

    def listen_port(self, worker: int) -> int:
        """The port worker ``worker`` (of this process) listens on; 0: any free port."""
        return self.port + worker if self.port else 0
