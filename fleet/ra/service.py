"""The RA as a trio HTTP service (``fleet ra serve``): device requests in, upstream CA out.

Each CMP POST is verified by the ``Relay`` (a refusal is answered at once, the CA never sees
it), then forwarded over the transport seam (``fleet.transport.CmpTransport``: the pooled
HTTP client in production, an in-process CA in tests) and the answer relayed back. Paths:
``/.well-known/cmp[/p/<profile>][/<op>]`` goes to the upstream URL's path with the same
suffix (so a profile reaches the CA), ``/pkix/`` to the upstream URL as given.

In nested mode requests wait for a batch: it leaves when it holds ``batch_size`` messages or
``batch_wait`` seconds after its first, as one envelope to the upstream URL; the answer
envelope is split back to the waiting devices (``fleet.ra.batching.NestingTransport``). A batch
never holds two messages of one transaction (the second waits for the next batch), so no
device can make a batch fail for the others. An upstream that cannot be reached, answers late or answers something
unverifiable costs each waiting device an error from the RA (systemUnavail or the upstream's
failInfo), never a hang.

Knobs make the RA a load target like the CA: added latency, injected CMP errors, HTTP 503s and
dropped connections (``fleet.ca.config.LoadKnobs``; waiting does not apply).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import trio

from fleet.ca.config import LoadKnobs
from fleet.ca.service import CMP_TYPE, route
from fleet.cmp.messages import FailInfo
from fleet.http.server import (
    HttpObserver,
    HttpRequest,
    HttpResponse,
    HttpServerStats,
    observed,
    serve_http,
)
from fleet.ra.batching import EnvelopeRefused, NestingTransport
from fleet.ra.relay import Inbound, RaMode, RaRefusal, Relay, UpstreamRefusal
from fleet.transport import CmpTransport, TransportError

__all__ = ["RaObserver", "RaService"]

log = logging.getLogger(__name__)

_WELL_KNOWN = "/.well-known/cmp"


class RaObserver(HttpObserver, Protocol):
    """Told about every answer, upstream exchange and batch (``fleet.ra.metrics.RaMetrics``)."""

    def request(self, body: str, outcome: str, fail: str, seconds: float) -> None: ...

    def upstream(self, kind: str, seconds: float, error: str) -> None: ...

    def batch(self, size: int) -> None: ...

    def sample(self, service: RaService) -> None: ...


@dataclass(slots=True)
class _ReplyWaiter:
    inbound: Inbound
    done: trio.Event = field(default_factory=trio.Event)
    answer: bytes = b""
    outcome: str = "forwarded"
    fail: str = ""


class RaService:
    """HTTP front of one ``Relay`` and its upstream (module doc)."""

    def __init__(
        self,
        relay: Relay,
        transport: CmpTransport,
        *,
        upstream_path: str | None = None,
        batch_size: int = 1,
        batch_wait: float = 0.05,
        upstream_timeout: float = 30.0,
        knobs: LoadKnobs | None = None,
        clock: Callable[[], float] = time.time,
        metrics: RaObserver | None = None,
    ) -> None:
        self.relay = relay
        self.transport = transport
        self.upstream_path = upstream_path
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.upstream_timeout = upstream_timeout
        self.knobs = knobs or LoadKnobs()
        self.clock = clock
        self.metrics = metrics
        self._rng = random.Random(self.knobs.seed)
        self.outcomes: Counter[tuple[str, str, str]] = Counter()  # (body, outcome, failInfo) -> count
        self.upstream_posts: Counter[str] = Counter()  # "single" / "nested" envelopes sent
        self.http_stats = HttpServerStats()
        self.base_url: str | None = None
        self._nesting: NestingTransport | None = None

    @property
    def batching(self) -> bool:
        return self.relay.policy.mode is RaMode.NESTED

    # -- HTTP -----------------------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse:
        return await observed(self.metrics, self._respond, request)

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        kind, _ = route(request.path)
        if kind != "cmp":
            return _plain(404, "not found (this RA serves CMP only)\n")
        if request.method != "POST":
            return _plain(405, "CMP takes POST\n", (("Allow", "POST"),))
        media = (request.header(b"content-type") or b"").split(b";")[0].strip().lower()
        if media != CMP_TYPE.encode():
            return _plain(415, "Content-Type must be application/pkixcmp\n")
        knobs = self.knobs
        rng = self._rng
        if knobs.drop_fraction and rng.random() < knobs.drop_fraction:
            return HttpResponse(0, drop_connection=True)
        if knobs.http_503_fraction and rng.random() < knobs.http_503_fraction:
            return _plain(503, "service unavailable (load-target knob)\n", (("Retry-After", "1"),))
        answer = await self._cmp(request, rng)
        if knobs.latency.kind != "none":
            delay = knobs.latency.sample(rng)
            if delay > 0:
                await trio.sleep(delay)
        return HttpResponse(200, answer, CMP_TYPE)

    async def _cmp(self, request: HttpRequest, rng: random.Random) -> bytes:
        started = time.perf_counter()
        now = self.clock()
        try:
            inbound = self.relay.accept(request.body, now)
        except RaRefusal as refusal:
            self._count(refusal.request, "refused", refusal.fail.name, started)
            return refusal.data
        if self.knobs.error_fraction and rng.random() < self.knobs.error_fraction:
            self._count(inbound.label, "injected", FailInfo.systemFailure.name, started)
            return self.relay.refuse(inbound, FailInfo.systemFailure, "injected failure (load-target knob)", now)
        if self.batching:
            waiter = await self._batched(inbound)
        else:
            waiter = await self._single(inbound, self._path(request.path))
        self._count(inbound.label, waiter.outcome, waiter.fail, started)
        return waiter.answer

    def _path(self, target: str) -> str | None:
        """The upstream path for a request to ``target`` (module doc)."""
        base = self.upstream_path
        path = target.split("?", 1)[0]
        if base is None or not path.startswith(_WELL_KNOWN):
            return None
        suffix = path[len(_WELL_KNOWN):].rstrip("/")
        return base.rstrip("/") + suffix if suffix else None

    def _count(self, body: str, outcome: str, fail: str, started: float) -> None:
        self.outcomes[(body, outcome, fail)] += 1
        if self.metrics is not None:
            self.metrics.request(body, outcome, fail, time.perf_counter() - started)

    # -- forwarding -------------------------------------------------------------------------

    async def _single(self, inbound: Inbound, path: str | None) -> _ReplyWaiter:
        waiter = _ReplyWaiter(inbound)
        relay = self.relay
        data = relay.upstream(inbound, self.clock())
        self.upstream_posts["single"] += 1
        body = await self._post("single", data, path, [waiter])
        if body is not None:
            try:
                waiter.answer = relay.downstream(inbound, body, self.clock())
            except UpstreamRefusal as exc:
                self._fail(waiter, exc.fail, exc.text, "upstream_refused")
        return waiter

    async def _post(self, kind: str, data: bytes, path: str | None, waiters: list[_ReplyWaiter]) -> bytes | None:
        """The upstream's answer, or None after giving each waiter the RA's error."""
        started = time.perf_counter()
        error = ""
        try:
            response = await self.transport.post(
                data, path=path, deadline=trio.current_time() + self.upstream_timeout)
            return response.body
        except TransportError as exc:
            error = exc.kind
            for w in waiters:
                self._fail(w, FailInfo.systemUnavail, f"upstream CA unavailable ({exc.kind})", "upstream_error")
            return None
        finally:
            if self.metrics is not None:
                self.metrics.upstream(kind, time.perf_counter() - started, error)

    def _fail(self, waiter: _ReplyWaiter, fail: FailInfo, text: str, outcome: str) -> None:
        waiter.answer = self.relay.refuse(waiter.inbound, fail, text, self.clock())
        waiter.outcome = outcome
        waiter.fail = fail.name

    async def _batched(self, inbound: Inbound) -> _ReplyWaiter:
        waiter = _ReplyWaiter(inbound)
        assert self._nesting is not None, "run_batches() runs the batches"
        try:
            waiter.answer = (await self._nesting.post(inbound.data)).body
        except EnvelopeRefused as exc:
            self._fail(waiter, exc.fail, exc.problem, "upstream_refused")
        except TransportError as exc:
            self._fail(waiter, FailInfo.systemUnavail, f"upstream CA unavailable ({exc.kind})", "upstream_error")
        return waiter

    def _on_batch(self, size: int, seconds: float, error: str) -> None:
        self.upstream_posts["nested"] += 1
        if self.metrics is not None:
            self.metrics.batch(size)
            self.metrics.upstream("nested", seconds, error)

    # -- running --------------------------------------------------------------------------

    async def run_batches(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the batches (nested mode) and the metrics sampling until cancelled (``serve``
        does; tests over an in-process transport start it themselves)."""
        async with trio.open_nursery() as nursery:
            relay = self.relay
            if self.batching:
                self._nesting = NestingTransport(
                    self.transport, relay.signer, nursery, batch_size=self.batch_size, batch_wait=self.batch_wait,
                    trust=relay.upstream_trust, untrusted=relay.untrusted, timeout=self.upstream_timeout,
                    clock=self.clock, on_batch=self._on_batch,
                )
            task_status.started()
            if self.metrics is not None:
                while True:
                    await trio.sleep(1.0)
                    self.metrics.sample(self)
            await trio.sleep_forever()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        max_body_bytes: int = 1_000_000,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the bound port."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run_batches)
            bound = await nursery.start(partial(
                serve_http, self.handle, host, port, max_body_bytes=max_body_bytes,
                stats=self.http_stats, ssl_context=ssl_context,
            ))
            scheme = "https" if ssl_context is not None else "http"
            self.base_url = f"{scheme}://{_url_host(host)}:{bound}"
            task_status.started(bound)


def _plain(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    return HttpResponse(status, text.encode(), "text/plain", headers=headers)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
