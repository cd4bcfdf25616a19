"""The server role's policy, apart from the engine, so that configuration layers (the CA's
config, load profiles that describe an embedded CA) can name it without importing the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ServerConfig"]


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
    max_issue_rate: float | None = None  # certificate requests per second beyond which they get systemUnavail
    # PBM/PBMAC1 iteration cap (checklist item 17); None: each algorithm's own, as the client's
    # (PasswordBasedMac 100,000, PBMAC1 1,000,000: fleet.cmp.protection)
    max_iterations: int | None = None
    max_rsa_bits: int = 8192  # RSA key size cap for signers and requested keys
    min_nonce_bytes: int = 16
    require_message_time: bool = True  # RFC 9483 §3.1; False for devices without a clock
    allow_mac_rr: bool = False  # rr must be signed by the certificate (or its key) by default
    # A certificate replaced by a confirmed kur no longer signs requests (as the conformance
    # suites expect); True lets it go on until it expires or is revoked.
    allow_replaced_signers: bool = False
