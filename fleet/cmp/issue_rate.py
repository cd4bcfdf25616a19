"""A cap on how many certificates a server starts issuing per second: a token bucket, without I/O
(the caller passes the time), so a load target's capacity is a known number whatever the client's
turnaround (``fleet ca serve --issue-rate``).

Requests beyond the rate are refused at once (systemUnavail), not queued: above the cap the
surplus fails in proportion, so an error-rate SLO breaks as soon as the offered rate passes it.
The bucket holds a tenth of a second's tokens, enough for arrivals bunched by a busy machine's
scheduling but drained within a few seconds by a rate a few per cent over the cap.
"""

from __future__ import annotations

__all__ = ["BURST_SECONDS", "TokenBucket"]

BURST_SECONDS = 0.1


class TokenBucket:
    """At most ``rate`` takes per second on average, ``burst`` at once; full at the start."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"the rate must be above 0, not {rate!r}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * BURST_SECONDS)
        self.tokens = self.burst
        self.last: float | None = None

    def take(self, now: float) -> bool:
        """Whether one more may start at ``now`` (seconds; a clock that goes backwards adds nothing)."""
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
