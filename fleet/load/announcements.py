"""One worker's devices receiving pushed announcements, and the run's revocations that cause them.

The worker listens on one HTTP port (``[announcements]``, ``fleet.load.announce_config``); a
device's URL is ``/d/<reference>`` on it, but the device an announcement is for is found by what
it names: a rann by its certificate's serial number. Every POST is read with
``fleet.cmp.announce.read_announcement`` against the run's trust anchors; a refused one is
counted by failInfo and answered 400, never disturbing another device. A believed one is
answered 202 (taken; what it triggers runs after the answer) and acted on:

* rann of a device's current certificate: the device re-enrolls (a MAC-protected ir, recorded as
  the ``reenroll`` operation, its latency from the rann's receipt);
* ckuann: newWithNew becomes a trust anchor of the worker's devices (they share one trust store);
* cann, crlann: counted.

The run revokes ``revoke_fraction`` of the certificates it is issued (a seeded draw, never a
re-enrollment's certificate), ``revoke_after`` seconds after issue, with an rr signed by a PKI
management entity (RFC 9483 §5.3.2), recorded as the ``revoke`` operation; the rann's delivery
latency is measured from that rr. Memory: two integers per enrolled device (its current serial
and the way back), and one per revocation awaiting its rann.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from urllib.parse import quote

import trio
from cryptography import x509

from fleet.ca.config import CaConfig
from fleet.cmp.announce import (
    AnnouncementError,
    KeyUpdateAnnouncement,
    RevAnnouncement,
    read_announcement,
)
from fleet.cmp.messages import PKIStatus
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.requests import RevocationRequest
from fleet.cmp.trust import TrustStore, load_cert
from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.http.server import HttpRequest, HttpResponse, serve_http
from fleet.load.announce_config import AnnouncementLoad
from fleet.load.child import free_port
from fleet.load.device import reference_names
from fleet.load.profiles import Profile
from fleet.load.results import AnnouncementStats, RunResults
from fleet.load.runner import WorkerRun
from fleet.load.segments import split
from fleet.load.shards import Shard
from fleet.ra.credentials import make_ra_credential

__all__ = ["DeviceAnnouncements", "PushSetup", "announcement_setup", "device_path"]

_TAKEN = HttpResponse(202, b"", "")
_ACTED_ON = (PKIStatus.REVOCATION_NOTIFICATION, PKIStatus.REVOCATION_WARNING)


def device_path(reference: str) -> str:
    """A device's path on its worker's listener (the reference percent-encoded by the caller)."""
    return f"/d/{reference}"


class DeviceAnnouncements:
    """The announcement side of one worker (module doc)."""

    def __init__(
        self, config: AnnouncementLoad, trust: TrustStore, *, revoker: SignatureProtector | None = None,
        port: int = 0, seed: int = 1,
    ) -> None:
        self.config = config
        self.trust = trust  # the worker's devices' own: a ckuann changes theirs
        self.revoker = revoker
        self.port = port  # the bound port once serving
        self.stats = AnnouncementStats()
        self._rng = random.Random(seed)
        self._serial_of: dict[int, int] = {}  # device -> its current certificate's serial
        self._device_of: dict[int, int] = {}  # serial -> device
        self._revoked_at: dict[int, float] = {}  # serial -> when the run's rr left (trio clock)
        self._outstanding = 0  # revocations not yet announced, re-enrollments running
        self._settled = trio.Event()
        self._run: WorkerRun | None = None
        self._nursery: trio.Nursery | None = None

    # -- listening -------------------------------------------------------------------------

    async def serve(self, run: WorkerRun, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; what announcements trigger runs here too."""
        self._run = run
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.port = await nursery.start(partial(serve_http, self.handle, self.config.host, self.port))
            task_status.started(self.port)
            await trio.sleep_forever()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(405, b"announcements are POSTed\n", "text/plain", headers=(("Allow", "POST"),))
        received = trio.current_time()
        observer = getattr(self._run, "observer", None)
        tell = getattr(observer, "announcement", None)
        try:
            msg, announcement = read_announcement(request.body, trust=self.trust, now=time.time())
        except AnnouncementError as exc:
            self.stats.refused[exc.fail.name] += 1
            if tell is not None:
                tell("-", exc.fail.name, None)  # the body was not believed
            return HttpResponse(400, f"refused ({exc.fail.name}): {exc.text[:200]}\n".encode(), "text/plain")
        self.stats.received[msg.label] += 1
        delivery = None
        if isinstance(announcement, RevAnnouncement):
            delivery = self._on_rann(announcement, received)
        elif isinstance(announcement, KeyUpdateAnnouncement):
            self.trust.add(load_cert(announcement.new_with_new))
            self.stats.trust_updates += 1
        if tell is not None:
            tell(msg.label, "believed", delivery)
        return _TAKEN

    def _on_rann(self, a: RevAnnouncement, received: float) -> float | None:
        """Re-enroll the device whose current certificate it names; the delivery latency when
        the run revoked it."""
        sent = self._revoked_at.pop(a.serial, None)
        delivery = None
        if sent is not None:
            delivery = max(0.0, received - sent)
            self.stats.delivery.record(delivery)
            self._done()
        device = self._device_of.get(a.serial)
        if device is None or self._serial_of.get(device) != a.serial or a.status not in _ACTED_ON:
            self.stats.not_current += 1
            return delivery
        del self._device_of[a.serial], self._serial_of[device]
        if self.config.reenroll and self._nursery is not None and self._run is not None:
            self.stats.reenrollments += 1
            self._outstanding += 1
            self._nursery.start_soon(self._reenroll, self._run, device, received)
        return delivery

    async def _reenroll(self, run: WorkerRun, device: int, received: float) -> None:
        """A MAC ir; a device inside a flow (it holds its credentials) keeps the new ones for the
        flow's next steps, any other holds nothing afterwards."""
        in_flow = device in run.devices.states
        try:
            await run.extra_operation("ir", device, received, keep_key=in_flow, label="reenroll")
        finally:
            if not in_flow:
                run.devices.forget(device)
            self._done()

    # -- what the run is issued, and revokes -------------------------------------------------

    def issued(self, device: int, certificate: bytes, *, reenrolled: bool) -> None:
        """Device ``device`` now holds ``certificate`` (DER); maybe revoke it later (module doc)."""
        cert = load_cert(certificate)
        serial = cert.serial_number
        old = self._serial_of.get(device)
        if old is not None:
            self._device_of.pop(old, None)
        self._serial_of[device] = serial
        self._device_of[serial] = device
        fraction = self.config.revoke_fraction
        if (fraction and not reenrolled and self.revoker is not None and self._nursery is not None
                and self._rng.random() < fraction):
            self._outstanding += 1
            self._nursery.start_soon(self._revoke, cert)

    async def _revoke(self, cert: x509.Certificate) -> None:
        run = self._run
        assert run is not None and self.revoker is not None
        await trio.sleep(self.config.revoke_after)
        request = RevocationRequest.for_certificate(cert, self.config.reason_code)
        self._revoked_at[cert.serial_number] = trio.current_time()
        ok = await run.extra_operation("revoke", -1, trio.current_time(), prepared=(self.revoker, request, None))
        if not ok and self._revoked_at.pop(cert.serial_number, None) is not None:
            self._done()  # not revoked: no rann to wait for

    def _done(self) -> None:
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._settled.set()

    async def drain(self) -> None:
        """After the arrivals: wait, at most ``linger`` seconds, for the run's revocations to be
        announced and the re-enrollments they trigger to end."""
        if self._outstanding <= 0:
            return
        self._settled = trio.Event()
        with trio.move_on_after(self.config.linger):
            while self._outstanding > 0:
                await self._settled.wait()
                self._settled = trio.Event()

    def finish(self, results: RunResults) -> None:
        """Hand what was measured to the worker's results."""
        self.stats.unannounced = len(self._revoked_at)
        results.announcements = self.stats


# -- the run's setup (orchestrator) ----------------------------------------------------------------


@dataclass
class PushSetup:
    """Where each worker listens, the revoking entity, and how the embedded CA is told."""

    profile: Profile
    ports: list[int]
    revoker_pem: tuple[bytes, bytes] | None  # certificate (with its chain) and key, PEM
    revoker_root: bytes | None  # the root of a credential made for the run (the embedded CA trusts it)
    segment_start: int  # the first segment of this process's workers (shards)
    segments: int

    @property
    def host(self) -> str:
        host = self.profile.announcements.host if self.profile.announcements else "127.0.0.1"
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def url(self, worker: int, reference: str = "{reference}") -> str:
        return f"http://{self.host}:{self.ports[worker]}{device_path(reference)}"

    def configure_ca(self, config: CaConfig, state_dir: Path) -> CaConfig:
        """The embedded CA's settings: push to the workers' listeners (one worker: a template;
        several: each device's URL registered in a routes file), take the run's rr."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        changes: dict[str, object] = {"announce_url": self.url(0)}
        if len(self.ports) > 1:
            routes = state_dir / "announce-routes.txt"
            atomic_write(routes, self._routes().encode())
            changes["announce_routes"] = routes
        if self.revoker_root is not None:
            root = state_dir / "revoker-root.pem"
            atomic_write(root, self.revoker_root)
            changes["ra_trusted"] = (*config.ra_trusted, root)
        return replace(config, **changes)  # type: ignore[arg-type]

    def _routes(self) -> str:
        """``reference URL`` lines: every device of every worker, under each name the CA may
        record as its reference (``reference_names``)."""
        profile = self.profile
        signed = any(op in ("kur", "cr") for op in profile.flow)
        parts = split(self.segments)
        lines = []
        for worker in range(len(self.ports)):
            for index in parts[self.segment_start + worker].range(profile.devices.count):
                for name in reference_names(profile.devices, index, signed=signed):
                    lines.append(f"{name} {self.url(worker, quote(name, safe=''))}\n")
        return "".join(lines)

    def describe(self) -> str:
        config = self.profile.announcements
        assert config is not None
        where = ", ".join(self.url(w, "<reference>") for w in range(len(self.ports)))
        revoking = (f"; revoking {config.revoke_fraction:.0%} of issued certificates {config.revoke_after:g} s after issue"
                    if config.revoke_fraction else "")
        return f"fleet: devices listen for announcements at {where}{revoking}"


def announcement_setup(profile: Profile, shard: Shard | None, *, external: bool) -> PushSetup | None:
    """``[announcements]``'s ports and revoking entity, or None without the section. Against a
    CA elsewhere, revoking needs ``cert``/``key`` (a PKI entity that CA lets revoke)."""
    config = profile.announcements
    if config is None:
        return None
    workers = profile.workers
    ports = [config.listen_port(w) or free_port() for w in range(workers)]
    revoker_pem = revoker_root = None
    if config.revoke_fraction:
        if config.cert is not None and config.key is not None:
            try:
                revoker_pem = (config.cert.read_bytes(), config.key.read_bytes())
            except OSError as exc:
                raise FleetError(f"[announcements] cannot read {exc.filename}: {exc.strerror}") from None
        elif external:
            raise FleetError("[announcements] revoke_fraction needs cert and key against --server "
                             "(a PKI entity with id-kp-cmcRA that CA lets revoke)")
        else:
            made = make_ra_credential("fleet run revoker", pki_entity=True)
            revoker_pem, revoker_root = (made.cert_pem, made.key_pem), made.root_pem
    start = shard.segment_indices(workers).start if shard else 0
    return PushSetup(profile, ports, revoker_pem, revoker_root, start, workers * (shard.count if shard else 1))
