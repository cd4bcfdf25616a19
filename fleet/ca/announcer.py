"""The CA pushing announcements (RFC 9810 §5.3.13-5.3.16 over HTTP POST, RFC 6712 §3.7 / RFC
9811): a rann when a certificate is revoked and, when asked, a cann when one is issued, to the
URL each device registered; a ckuann after a root key rollover (``fleet.ca.rollover``) and, when
asked, a crlann when the CA issues a new CRL, to every device with a valid certificate. The URL
is a template (``fleet ca serve --announce-url 'http://{reference}.devices.example/cmp'``:
``{reference}`` is the device's reference (its MAC senderKID or its signer's CN), ``{serial}``
the certificate's serial in hex), or for the devices registered in a routes file
(``--announce-routes``: ``reference URL`` lines) their own URL: ``fleet run`` registers each
worker's devices with its own listener.

Announcements are signed by the CA's CMP signer when the event happens (``fleet.cmp.announce``)
and wait in a bounded queue (``max_queue``: beyond it one is dropped and counted, the CA never
slows down for its listeners); a delivery task posts them, at most ``concurrency`` at once,
retrying a failed post ``retries`` times with exponential backoff. A listener answers any 2xx
to take one (200 with a CMP body, 202, 204 without one); anything else (a 4xx even with a CMP
body), or no answer within ``timeout``, is a failure.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import trio
from cryptography import x509

from fleet.ca.authority import Authority
from fleet.ca.config import check_template
from fleet.cmp.announce import (
    Announcement,
    CertAnnouncement,
    CrlAnnouncement,
    KeyUpdateAnnouncement,
    RevAnnouncement,
    announce,
)
from fleet.cmp.messages import PKIStatus, directory_name
from fleet.errors import FleetError
from fleet.http.client import CmpHttpClient
from fleet.http.errors import HttpStatusError
from fleet.randomness import RandomPool
from fleet.transport import CmpTransport, TransportError

__all__ = ["AnnounceStatistics", "Announcer", "load_routes"]

log = logging.getLogger(__name__)

@dataclass(slots=True)
class AnnounceStatistics:
    queued: int = 0
    delivered: int = 0
    failed: int = 0  # given up after the retries
    dropped: int = 0  # the queue was full
    retries: int = 0


def load_routes(path: Path) -> dict[str, str]:
    """The registered announcement URLs of ``path``: one ``reference URL`` line per device
    (blank lines and ``#`` comments skipped); a ``FleetError`` naming the line otherwise. Equal
    URLs are one string in memory: a worker's thousands of devices share its listener's URL."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(f"announce routes {path}: cannot read: {exc}") from None
    routes: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        reference, _, url = text.rpartition(" ")
        parts = urlsplit(url)
        if not reference or parts.scheme not in ("http", "https") or not parts.hostname:
            raise FleetError(f"announce routes {path}, line {number}: expected 'reference http(s)://URL'")
        routes[reference.strip()] = sys.intern(url)
    return routes


def _http(url: str, timeout: float) -> AbstractAsyncContextManager[CmpTransport]:
    return CmpHttpClient(url, max_connections=1, request_timeout=timeout, keep_alive=False)


class Announcer:
    """Builds, queues and delivers one CA's announcements (module doc)."""

    def __init__(
        self,
        authority: Authority,
        template: str,
        *,
        issued: bool = False,
        routes: Mapping[str, str] | None = None,
        max_queue: int = 10_000,
        concurrency: int = 16,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        transport: Callable[[str, float], AbstractAsyncContextManager[CmpTransport]] = _http,
        observer: Callable[[str, float | None], None] | None = None,
    ) -> None:
        self.authority = authority
        self.template = check_template(template)  # a CaConfig was checked already; a direct caller too
        self.announce_issued = issued
        self.routes = routes or {}  # registered URLs by reference, before the template
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.clock = clock
        self.stats = AnnounceStatistics()
        self.latencies: list[float] = []  # seconds from the event to the listener's answer (last 10,000)
        self._transport = transport
        # Told each result: queued, dropped, retried, failed, delivered (with seconds): CaMetrics.
        self.observer = observer
        self._slots = trio.Semaphore(concurrency)
        self._send, self._receive = trio.open_memory_channel[tuple[str, bytes, float]](max_queue)
        self._random = RandomPool().take
        self._signer = authority.signer()

    # -- events (called on the trio thread, never block) ----------------------------------

    def revoked(self, serial: int) -> None:
        record = self.authority.store.get(serial)
        if record is None:
            return
        cert = x509.load_der_x509_certificate(record.der)
        when = record.revocation_time or cert.not_valid_before_utc
        issuer = directory_name(cert.issuer.public_bytes())
        self._queue(record.device_ref, serial,
                    RevAnnouncement(PKIStatus.REVOCATION_NOTIFICATION, issuer, serial, when, when))

    def issued(self, serial: int) -> None:
        if not self.announce_issued:
            return
        record = self.authority.store.get(serial)
        if record is not None:
            self._queue(record.device_ref, serial, CertAnnouncement(record.der))

    def key_updated(self, update: KeyUpdateAnnouncement) -> int:
        """A root key rollover: a ckuann to every device with a valid certificate; how many."""
        return self._broadcast(update)

    def crl_issued(self, crl_der: bytes) -> int:
        """A new CRL (``--announce-crl``): a crlann to every device with a valid certificate."""
        return self._broadcast(CrlAnnouncement((crl_der,)))

    def _broadcast(self, a: Announcement) -> int:
        """One signed message for every device (signed once: the same content for all, and a
        rollover of a large population must not hold the CA's thread for a signature each)."""
        devices = self.authority.store.devices()
        data = announce(a, self._signer, now=self.clock(), random=self._random)
        for reference, serial in devices.items():
            self._put(self._url(reference, serial), data)
        return len(devices)

    def _queue(self, reference: str | None, serial: int, a: Announcement) -> None:
        self._put(self._url(reference, serial), announce(a, self._signer, now=self.clock(), random=self._random))

    def _url(self, reference: str | None, serial: int) -> str:
        """The device's registered URL, else the template's."""
        return self.routes.get(reference or "") or self.template.format(
            reference=quote(reference or "", safe=""), serial=f"{serial:x}")

    def _put(self, url: str, data: bytes) -> None:
        try:
            self._send.send_nowait((url, data, time.monotonic()))
        except trio.WouldBlock:
            self.stats.dropped += 1
            self._tell("dropped")
            return
        self.stats.queued += 1
        self._tell("queued")

    def _tell(self, result: str, seconds: float | None = None) -> None:
        if self.observer is not None:
            self.observer(result, seconds)

    # -- delivery ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with trio.open_nursery() as nursery:
            async for url, data, queued_at in self._receive:
                await self._slots.acquire()
                nursery.start_soon(self._deliver, url, data, queued_at)

    async def _deliver(self, url: str, data: bytes, queued_at: float) -> None:
        try:
            for attempt in range(self.retries + 1):
                try:
                    async with self._transport(url, self.timeout) as transport:
                        response = await transport.post(data, deadline=trio.current_time() + self.timeout)
                    status = getattr(response, "status", 200)  # transports without HTTP have none
                    if status // 100 != 2:
                        raise HttpStatusError(url, status, "application/pkixcmp")
                except HttpStatusError as exc:
                    if exc.status // 100 == 2:  # a 2xx without a CMP body (204, say) took it too
                        self._delivered(queued_at)
                        return
                    if not await self._failed(url, attempt, exc):
                        return
                except (TransportError, FleetError) as exc:
                    if not await self._failed(url, attempt, exc):
                        return
                else:
                    self._delivered(queued_at)
                    return
        finally:
            self._slots.release()

    def _delivered(self, queued_at: float) -> None:
        self.stats.delivered += 1
        if len(self.latencies) >= 10_000:
            del self.latencies[:5_000]
        seconds = time.monotonic() - queued_at
        self.latencies.append(seconds)
        self._tell("delivered", seconds)

    async def _failed(self, url: str, attempt: int, exc: Exception) -> bool:
        """Count a failed post; after a backoff, True when another attempt follows."""
        if attempt == self.retries:
            self.stats.failed += 1
            self._tell("failed")
            log.warning("announcement to %s not delivered after %d attempts: %s",
                        urlsplit(url).netloc, attempt + 1, exc)
            return False
        self.stats.retries += 1
        self._tell("retried")
        await trio.sleep(self.backoff * 2**attempt)
        return True
