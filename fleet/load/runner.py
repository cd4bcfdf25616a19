"""One worker's load run: a trio nursery of virtual devices driven by the arrival schedule.

Each arrival picks a device and runs the profile's flow (e.g. genm, ir, kur, rr) through the
sans-I/O client, one operation after another. A failure is recorded and ends that arrival's
flow; it never touches another device. Latency is recorded from the arrival's intended start
(open model) and, separately, per operation from the moment its first request was sent.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import trio

from fleet.cmp.client import ClientTransaction, Done, Send
from fleet.cmp.errors import StatusError
from fleet.cmp.protection import MacProtector, PrivateKey, SignatureProtector
from fleet.cmp.requests import CertRequest, Request
from fleet.connect import open_client
from fleet.errors import FleetError
from fleet.exchange import run_transaction
from fleet.load.arrivals import ArrivalDriver
from fleet.load.device import DeviceFactory
from fleet.load.profiles import Profile
from fleet.load.results import RunResults
from fleet.load.schedule import Closed, OpenShape
from fleet.load.segments import Segment
from fleet.observe import Observer
from fleet.tls import TlsClient
from fleet.transport import CmpTransport, TransportFactory

log = logging.getLogger(__name__)


class Announcements(Protocol):
    """The devices' side of pushed announcements (``fleet.load.announcements.DeviceAnnouncements``)."""

    async def serve(self, run: WorkerRun, *, task_status: trio.TaskStatus[int] = ...) -> None: ...

    def issued(self, device: int, certificate: bytes, *, reenrolled: bool) -> None: ...

    async def drain(self) -> None: ...

    def finish(self, results: RunResults) -> None: ...


@dataclass
class WorkerPlan:
    """What one worker does: its share of the schedule and of the device identities."""

    profile: Profile
    url: str
    segment: Segment
    worker: int = 0
    path: str | None = None
    proxy: str | None = None  # None: from the environment (fleet.http.proxy)
    start_at: float | None = None  # wall-clock start (epoch seconds) shared by all shards; None: now
    warmup: float = 0.0  # seconds: arrivals due earlier are left out of ``results.steady``
    tls: TlsClient | None = None  # --tls-*: server verification, client certificate


@dataclass
class LiveCounters:
    """Cheap counters the progress line and metrics read while the run goes on."""

    in_flight: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by failInfo name, else error kind


def classify(exc: BaseException) -> tuple[str, tuple[str, ...]]:
    """(bounded error kind, PKIFailureInfo names) for any failure of one operation."""
    if isinstance(exc, StatusError):
        return exc.kind, exc.fail_names
    if isinstance(exc, FleetError):
        return getattr(exc, "kind", "error"), ()
    return "internal", ()


class WorkerRun:
    """One worker's devices over one transport: by default the client for ``plan.url``'s scheme
    (``CmpHttpClient`` with the profile's pool size and transaction timeout, or one CoAP socket
    with the profile's [coap] settings); ``transport`` makes another (an in-process CA, a stub)
    for tests and benches."""

    transport: CmpTransport  # open while ``run`` runs

    def __init__(
        self,
        plan: WorkerPlan,
        devices: DeviceFactory,
        *,
        observer: Observer | None = None,
        transport: TransportFactory | None = None,
        announcements: Announcements | None = None,
    ) -> None:
        """``announcements``: this worker's devices listen for pushed announcements and act on
        them (``fleet.load.announcements``)."""
        self.plan = plan
        self.announcements = announcements
        self.profile = plan.profile
        self.devices = devices
        self.observer = observer
        self._transport_factory = transport or self._client
        self.results = RunResults()
        if plan.warmup > 0:
            self.results.measure_from(plan.warmup)
        self.live = LiveCounters()
        self.driver: ArrivalDriver | None = None
        self.t0 = 0.0
        self._device_range = plan.segment.range(self.profile.devices.count)
        self._next_device = 0
        self._internal_logged = False
        self.stopped = trio.Event()

    def _client(self) -> AbstractAsyncContextManager[CmpTransport]:
        profile = self.profile
        coap = replace(profile.coap, seed=profile.seed * 1009 + self.plan.worker)  # own loss draws
        return open_client(self.plan.url, max_connections=profile.connections,
                           timeout=profile.transaction_timeout, coap=coap, proxy=self.plan.proxy,
                           ssl_context=self.plan.tls.context() if self.plan.tls is not None else None)

    async def run(self) -> RunResults:
        profile = self.profile
        async with self._transport_factory() as transport, trio.open_nursery() as listening:
            self.transport = transport
            announcements = self.announcements
            if announcements is not None:  # listening before the first request: no rann is missed
                await listening.start(announcements.serve, self)
            self.t0 = trio.current_time()
            cpu0 = time.process_time()
            with trio.CancelScope() as self.cancel_scope:
                if self.plan.start_at is not None:  # shards start in step: wait for the common instant
                    self.t0 += max(0.0, self.plan.start_at - time.time())
                    await trio.sleep_until(self.t0)
                if isinstance(profile.shape, Closed):
                    await self._closed_model(profile.shape)
                else:
                    await self._open_model(profile.shape)
            elapsed = trio.current_time() - self.t0
            if announcements is not None:
                if not self.cancel_scope.cancel_called:  # revocations still to be announced, re-enrollments
                    await announcements.drain()
                announcements.finish(self.results)
            listening.cancel_scope.cancel()
            self.results.cpu_seconds = time.process_time() - cpu0
            counters = getattr(transport, "counters", None)
            if counters is not None:  # e.g. CoAP retransmissions and losses
                self.results.transport = counters()
            pool = self.devices.prepared
            if pool is not None:
                self.results.prepared = {"prepared": pool.taken, "live": pool.missed}
                if pool.kur:
                    self.results.prepared |= {"kur_prepared": pool.kur_taken, "kur_live": pool.kur_missed}
        self.results.elapsed = elapsed
        self.stopped.set()
        return self.results

    def stop(self) -> None:
        """Stop early (``--abort-on-fail``, Ctrl-C): what was measured so far stays valid."""
        self.cancel_scope.cancel()

    async def _open_model(self, shape: OpenShape) -> None:
        profile = self.profile
        rng = np.random.default_rng(profile.seed)
        offsets = self.plan.segment.select(shape.offsets(profile.duration, rng))
        self.driver = ArrivalDriver(offsets, self._arrival, max_in_flight=profile.max_in_flight, clock_t0=self.t0,
                                    on_drop=lambda intended: self.results.dropped_at(intended - self.t0))
        try:
            await self.driver.run()
        finally:
            stats = self.driver.stats()
            self.results.scheduled = stats.scheduled
            self.results.started = stats.started
            self.results.dropped = stats.dropped
            self.results.completed = stats.completed
            self.results.lateness = stats.lateness
            self.results.in_flight_peak = stats.in_flight_peak
            self.results.window_scheduled(offsets)

    async def _closed_model(self, shape: Closed) -> None:
        """``shape.devices`` loops in all (this worker runs its exact share of them), each running
        the flow again and again. Every turn takes the next identity of this worker's device shard,
        as the open model's arrivals do, skipping identities another loop is using."""
        deadline = self.t0 + self.profile.duration
        loops = len(self.plan.segment.range(shape.devices))
        busy: set[int] = set()
        in_flight = 0

        async def loop() -> None:
            nonlocal in_flight
            while trio.current_time() < deadline:
                device = self._next_free_device(busy)
                busy.add(device)
                in_flight += 1
                self.results.in_flight_peak = max(self.results.in_flight_peak, in_flight)
                self.results.started += 1
                try:  # turn ``device - start`` of the shard is that device
                    await self._arrival(device - self._device_range.start, trio.current_time())
                finally:
                    in_flight -= 1
                    busy.discard(device)
                self.results.completed += 1
                if shape.think_time:
                    await trio.sleep(shape.think_time)

        with trio.move_on_at(deadline + self.profile.transaction_timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(loops):
                    nursery.start_soon(loop)

    def _next_free_device(self, busy: set[int]) -> int:
        """The next identity of the shard in turn that no loop is using (with more loops than
        identities, the next one in turn: they must share)."""
        r = self._device_range
        n = len(r) or 1
        for _ in range(min(n, len(busy) + 1)):
            device = r.start + self._next_device % n
            self._next_device += 1
            if device not in busy:
                return device
        return device

    async def _arrival(self, arrival: int, intended: float) -> None:
        """Run the flow for arrival ``arrival``. Devices take turns: arrival k of this worker
        uses the k-th device of its shard (modulo the shard's size)."""
        r = self._device_range
        device = r.start + arrival % (len(r) or 1)
        self.live.in_flight += 1
        flow = self.profile.flow
        try:
            if len(flow) == 1:  # the usual capacity test: one coroutine frame less to resume
                await self._operation(flow[0], device, intended, False)
                return
            pauses = self.profile.pause_before
            for step, op in enumerate(flow):
                if step:  # later steps: latency from when they could start
                    pause = pauses.get(op, 0.0)
                    if pause:
                        await trio.sleep(pause)
                    intended = trio.current_time()
                keep_key = step + 1 < len(flow)  # later steps sign with the new certificate's key
                if not await self._operation(op, device, intended, keep_key):
                    return
        finally:
            self.live.in_flight -= 1
            if self.devices.states:  # every flow starts afresh: hold no key or cert between arrivals
                self.devices.forget(device)

    async def extra_operation(
        self, op: str, device: int, intended: float, *, keep_key: bool = False, label: str | None = None,
        prepared: tuple[MacProtector | SignatureProtector, Request, PrivateKey | None] | None = None,
    ) -> bool:
        """An operation outside the arrivals' flows, measured like theirs (``fleet.load.announcements``:
        the run's revocation, a re-enrollment a rann triggered); ``label`` names it in the results."""
        return await self._operation(op, device, intended, keep_key, label=label, prepared=prepared)

    async def _operation(
        self, op: str, device: int, intended: float, keep_key: bool, *, label: str | None = None,
        prepared: tuple[MacProtector | SignatureProtector, Request, PrivateKey | None] | None = None,
    ) -> bool:
        """One transaction of ``device``, recorded under ``label`` (default ``op``); ``prepared``
        (protector, request, new key) replaces the device's own request (a revocation by the run)."""
        observer = self.observer
        sent_at = trio.current_time()
        polls = 0
        name = op if label is None else label
        if observer is not None:
            observer.operation_started(name)
        try:
            protector, request, new_key = prepared or self.devices.request(op, device)
            central = isinstance(request, CertRequest) and request.central_key_alg is not None
            tx = ClientTransaction(self.devices.client_config, request, protector=protector)
            del request  # the transaction drops it once sent: thousands of devices wait at once
            if not keep_key:
                new_key = None
            on_exchange = None
            if observer is not None:

                def on_exchange(send: Send, seconds: float) -> None:
                    observer.exchange(name, send.body_type.label, seconds)

            done: Done = await run_transaction(
                self.transport, tx, path=self.plan.path, timeout=self.profile.transaction_timeout, on_exchange=on_exchange,
            )
            polls = done.polls
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one device's failure is a result (logged once in _failed)
            self._failed(name, exc, intended, sent_at, polls)
            return False
        now = trio.current_time()
        if central and keep_key:
            new_key = done.private_key  # delivered by the CA, checked by the transaction
        if done.certificate is not None and new_key is not None:
            self.devices.enrolled(device, new_key, done.certificate, done.chain)
        elif op == "rr":
            self.devices.revoked(device)
        if self.announcements is not None and done.certificate is not None:
            self.announcements.issued(device, done.certificate, reenrolled=label is not None)
        results = self.results
        results.succeeded(name, now - self.t0, now - intended, now - sent_at)
        if polls:
            results.ops[name].polls += polls
        if done.warnings:
            results.ops[name].warnings.update(done.warnings)
            if observer is not None:
                for code in done.warnings:
                    observer.warning(name, code)
        self.live.ok += 1
        if observer is not None:
            observer.operation_done(name, True, "ok", (), now - intended, now - sent_at, polls)
        return True

    def _failed(self, op: str, exc: Exception, intended: float, sent_at: float, polls: int) -> None:
        kind, fail_names = classify(exc)
        if kind == "internal" and not self._internal_logged:
            self._internal_logged = True
            log.exception("internal error in a virtual device (reported once)")
        now = trio.current_time()
        self.results.failed(op, now - self.t0, now - intended, kind, fail_names)
        self.live.failed += 1
        label = fail_names[0] if fail_names else kind  # the progress line shows failInfo names
        self.live.errors[label] = self.live.errors.get(label, 0) + 1
        if self.observer is not None:
            self.observer.operation_done(op, False, kind, fail_names, now - intended, now - sent_at, polls)
