"""RFC 7252 §4.8 transmission parameters, configurable, and the derived times (§4.8.2)."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["CoapTiming"]


@dataclass(frozen=True, slots=True)
class CoapTiming:
    """How long a confirmable message waits for its ACK before it is sent again.

    The first timeout is random in [ack_timeout, ack_timeout * ack_random_factor] (so that
    many devices losing the same datagram do not retransmit in step) and doubles with each of
    at most ``max_retransmit`` retransmissions. The RFC's defaults are 2 s, 1.5 and 4; a lossy
    load test may raise ``max_retransmit``, a loopback test may shorten ``ack_timeout``.
    """

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    max_latency: float = 100.0  # RFC 7252's MAX_LATENCY, for EXCHANGE_LIFETIME

    def __post_init__(self) -> None:
        if not self.ack_timeout > 0:
            raise ValueError(f"ack_timeout must be > 0, got {self.ack_timeout}")
        if not self.ack_random_factor >= 1:
            raise ValueError(f"ack_random_factor must be >= 1, got {self.ack_random_factor}")
        if not 0 <= self.max_retransmit <= 20:
            raise ValueError(f"max_retransmit must be 0..20, got {self.max_retransmit}")

    def first_timeout(self, rng: random.Random) -> float:
        return self.ack_timeout * (1 + (self.ack_random_factor - 1) * rng.random())

    @property
    def max_transmit_span(self) -> float:
        return self.ack_timeout * (2**self.max_retransmit - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        return self.ack_timeout * (2 ** (self.max_retransmit + 1) - 1) * self.ack_random_factor

    @property
    def exchange_lifetime(self) -> float:
        """How long a message ID stays in use (duplicates detected), §4.8.2."""
        return self.max_transmit_span + 2 * self.max_latency + self.ack_timeout
