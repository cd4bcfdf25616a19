"""The RA's configuration (``fleet ra serve``): one typed record, checked when it is made.

``RaConfigError`` names the setting (``key``, the option without dashes) and the problem, so the
command line can say ``Invalid value for '--batch-size': ...`` and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fleet.ca.config import LoadKnobs
from fleet.cmp.nested import MAX_BATCH
from fleet.errors import FleetError
from fleet.ra.relay import RaMode
from fleet.tls import TlsClient

__all__ = ["RaConfig", "RaConfigError"]


class RaConfigError(FleetError):
    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True)
class RaConfig:
    """Where the RA listens, where it forwards and how, who it lets through. Secrets are bytes,
    never shown by ``repr``."""

    upstream: str
    host: str = "127.0.0.1"
    port: int = 8081
    mode: str = "pass"
    batch_size: int = 1
    batch_wait: float = 0.05
    upstream_timeout: float = 30.0
    # the RA's own CMP credential (certificate file: the certificate, then its chain)
    cert: Path | None = None
    key: Path | None = None
    upstream_trusted: tuple[Path, ...] = ()
    # who may send requests through it
    secret: bytes | None = field(default=None, repr=False)
    ref: str | None = None
    master_secret: bytes | None = field(default=None, repr=False)
    trusted: tuple[Path, ...] = ()
    vendor_trust: Path | None = None
    untrusted: tuple[Path, ...] = ()
    max_time_skew: float = 300.0  # 0: messageTime not checked
    max_iterations: int = 10_000
    max_body_bytes: int = 1_000_000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS towards the devices
    # TLS towards the upstream CA: its server's anchors, the RA's client certificate
    upstream_tls_trusted: Path | None = None
    upstream_tls_cert: Path | None = None
    upstream_tls_key: Path | None = None
    upstream_tls_key_pass: bytes | None = field(default=None, repr=False)
    knobs: LoadKnobs = field(default_factory=LoadKnobs)
    metrics_port: int | None = None
    metrics_host: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RaConfigError("upstream", f"must be an http:// or https:// URL, got {self.upstream!r}")
        if self.mode not in tuple(RaMode):
            raise RaConfigError("mode", f"must be one of {', '.join(RaMode)}, got {self.mode!r}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise RaConfigError("batch_size", f"must be 1..{MAX_BATCH}, got {self.batch_size}")
        if self.batch_size > 1 and self.mode != RaMode.NESTED:
            raise RaConfigError("batch_size", "batches are nested messages: use --mode nested")
        for name in ("batch_wait", "max_time_skew"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise RaConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 < self.upstream_timeout < float("inf"):
            raise RaConfigError("upstream_timeout", f"must be > 0, got {self.upstream_timeout}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise RaConfigError(name, f"must be 0..65535, got {value}")
        if self.max_iterations < 1 or self.max_body_bytes < 1:
            raise RaConfigError("max_iterations" if self.max_iterations < 1 else "max_body_bytes", "must be >= 1")
        if (self.cert is None) != (self.key is None):
            raise RaConfigError("key" if self.key is None else "cert", "--cert and --key go together")
        if self.cert is None:
            raise RaConfigError("cert", "the RA's CMP certificate is needed (it signs the RA's own error answers"
                                        " and, in nested and replace modes, what it forwards)")
        if self.mode != RaMode.PASS and not self.upstream_trusted:
            raise RaConfigError("upstream_trusted", f"--mode {self.mode} needs the CA's trust anchor to verify "
                                                    "its answers")
        if self.ref is not None and self.secret is None:
            raise RaConfigError("ref", "needs --secret")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise RaConfigError("tls_key" if self.tls_key is None else "tls_cert", "--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise RaConfigError("tls_client_ca", "needs --tls-cert and --tls-key (mutual TLS is HTTPS)")
        if (self.upstream_tls_cert is None) != (self.upstream_tls_key is None):
            raise RaConfigError("upstream_tls_key" if self.upstream_tls_key is None else "upstream_tls_cert",
                                "--upstream-tls-cert and --upstream-tls-key go together")
        if self.upstream_tls_key_pass is not None and self.upstream_tls_key is None:
            raise RaConfigError("upstream_tls_key_pass", "needs --upstream-tls-key")
        if parts.scheme != "https" and (self.upstream_tls_trusted or self.upstream_tls_cert):
            raise RaConfigError("upstream_tls_trusted" if self.upstream_tls_trusted else "upstream_tls_cert",
                                f"is for an https:// upstream, not {self.upstream!r}")
        if self.secret is None and self.master_secret is None and not self.trusted and self.vendor_trust is None:
            raise RaConfigError("secret", "the RA verifies every request: give --secret, --master-secret, "
                                          "--trusted or --vendor-trust")
        if self.knobs.waiting_fraction:
            raise RaConfigError("waiting_fraction", "does not apply to an RA (the CA decides waiting)")
        if self.metrics_port is not None and self.metrics_port == self.port and self.port != 0:
            raise RaConfigError("metrics_port", f"{self.metrics_port} is also --port")

    @property
    def ra_mode(self) -> RaMode:
        return RaMode(self.mode)

    def upstream_tls(self) -> TlsClient | None:
        """How the RA verifies the upstream's TLS server and the client certificate it shows it."""
        if self.upstream_tls_trusted is None and self.upstream_tls_cert is None:
            return None
        return TlsClient(self.upstream_tls_trusted, self.upstream_tls_cert, self.upstream_tls_key,
                         self.upstream_tls_key_pass,
                         names=("--upstream-tls-trusted", "--upstream-tls-cert", "--upstream-tls-key"))
