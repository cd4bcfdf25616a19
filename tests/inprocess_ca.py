"""fleet's real CA (``Authority`` and its ``CmpServer``) behind an ``InProcessTransport``: whole
CMP transactions without sockets, in virtual time under trio's MockClock.

Named uniquely (not conftest) so it cannot shadow another folder's helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.ca.authority import Authority
from fleet.cmp.client import ClientConfig
from fleet.cmp.protection import MacProtector
from fleet.cmp.server import CmpServer, Reply, ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.transport import InProcessTransport

MASTER = b"in-process-master"


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class InProcessCa:
    """An Authority in ``folder`` and a CmpServer for it (device secrets derived from ``MASTER``);
    ``transport()`` gives a transport to it with the given latency."""

    def __init__(self, folder: Path, **config: object) -> None:
        self.authority = Authority.open(folder, base_url="http://127.0.0.1:9")
        config.setdefault("grant_implicit_confirm", False)
        self.config = ServerConfig(**config)  # type: ignore[arg-type]
        self.server = self.authority.server(
            config=self.config, secrets=SharedSecrets(master=MASTER)
        )

    def transport(
        self, *, latency: float = 0.0, clock: Callable[[], float] | None = None
    ) -> InProcessTransport:
        return InProcessTransport(self.server, latency=latency, clock=clock)

    def root(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.authority.root)

    def mac_config(self, reference: bytes = b"dev-1") -> ClientConfig:
        """A device's MAC config: its secret derived from the master, the CA's root trusted."""
        secret = derive_device_secret(MASTER, reference)
        return ClientConfig(MacProtector(secret, reference=reference), TrustStore([self.root()]))

    def counts(self) -> dict[str, int]:
        self.authority.store.flush()
        return {k: v for k, v in self.authority.store.counts_by_status().items() if v}

    def close(self) -> None:
        self.authority.close()


class Deferring:
    """The server with every request answered "waiting" for ``defer`` seconds (RFC 9483 §4.4
    delayed delivery), as the CA's ``waiting_fraction`` knob does; posts are counted by type."""

    def __init__(self, server: CmpServer, defer: float) -> None:
        self.server = server
        self.defer = defer

    def handle(self, data: bytes, now: float) -> Reply:
        return self.server.handle(data, now, defer=self.defer)

    def tick(self, now: float) -> list[object]:
        return list(self.server.tick(now))
