"""The embedded CA as a trio HTTP service: CMP, CRL and OCSP on one port, plus load-target knobs.

Routes (paths compared case-sensitively; leading slashes stripped and trailing ones collapsed, as
OpenSSL's test tables require):

* POST ``/.well-known/cmp[/p/<profile>][/<operation>]`` and ``/pkix/``: CMP (RFC 9811, RFC 9483
  §6.1). Profiles ``lcmpp`` and ``3gpp`` select that mode; any other profile gets the default.
  CMP answers always come with HTTP 200, errors included, because OpenSSL 3.0's client reads a
  CMP body only from a 200.
* GET ``/crl/issuing.crl``: the issuing CA's CRL (``application/pkix-crl``).
* POST ``/ocsp`` (and GET ``/ocsp/<base64>``): OCSP (``application/ocsp-response``).

Knobs (``fleet.ca.config.LoadKnobs``) turn it into a load target: added latency, a fraction of
new requests answered "waiting" (delivered after ``check_after`` s to a pollReq), a fraction
answered with an error, HTTP 503s, dropped connections, and (in ``ServerConfig``) a cap on concurrent transactions.
A periodic tick expires unconfirmed certificates and hung transactions.

Crash contract (``fleet.ca.store`` states the store's side): no answer leaves before every
record change made so far is durable, so a kill -9 loses only changes nobody was told about:
issuances whose ip was not sent, confirmations whose pkiConf was not sent, the tick's
rejections (made again at the next start). At start, before the first request, every certificate still pending is rejected
(no transaction survives a restart to confirm it), and each tick rejects pending certificates
past their confirmation deadline that no live transaction is settling. So no certificate is
ever left unconfirmed, past its deadline and not revoked; until confirmed, OCSP calls a
certificate "revoked (certificateHold)", never "good" (``fleet.ca.revocation``).
"""

from __future__ import annotations

import base64
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Protocol
from urllib.parse import unquote

import trio

from fleet.ca.announcer import Announcer
from fleet.ca.authority import Authority
from fleet.ca.config import LoadKnobs
from fleet.ca.rollover import RolloverWatch
from fleet.ca.store import StoreError
from fleet.cmp.kga import KeyGenerator
from fleet.cmp.messages import FailInfo, fail_info_names
from fleet.cmp.nested_server import NestedServer
from fleet.cmp.server import Outcome, ServerConfig, ServerStatistics, TxState
from fleet.cmp.shared_secrets import SecretLookup
from fleet.errors import FleetError
from fleet.http.server import (
    HttpObserver,
    HttpRequest,
    HttpResponse,
    HttpServerStats,
    observed,
    serve_http,
)

__all__ = ["CaService", "CaStatistics", "ServiceObserver", "route"]

log = logging.getLogger(__name__)

CMP_TYPE = "application/pkixcmp"
_TEXT = "text/plain"
_OPERATIONS = frozenset(
    {
        "initialization", "certification", "keyupdate", "pkcs10", "revocation", "getcacerts",
        "getrootupdate", "getcertreqtemplate", "getcrls",
    }
)
_MODES = ("lcmpp", "3gpp")


@dataclass(frozen=True)
class CaStatistics:
    """A snapshot of the service, safe to keep: each field is a copy."""

    servers: Mapping[str, ServerStatistics]  # by mode (lcmpp, 3gpp)
    outcomes: Mapping[tuple[str, str, str], int]  # (request, status, failInfo names) -> count
    http: Mapping[str, int]  # plain answers by status code, "crl", "ocsp", "dropped"
    connections: HttpServerStats
    certificates: Mapping[str, int]  # by status (pending, issued, revoked, rejected)


class ServiceObserver(HttpObserver, Protocol):
    """Told about every answer and, each tick, the service's statistics (``CaMetrics``)."""

    def request(self, outcome: Outcome, seconds: float | None = None) -> None: ...

    def sample(self, stats: CaStatistics) -> None: ...


def route(path: str) -> tuple[str, str | None]:
    """Classify a request target: ("cmp", profile or None), ("crl", None), ("ocsp", rest) or
    ("none", None). Leading slashes are stripped and trailing ones collapsed. Short targets
    (clients send the same few) are classified once (bounded: 1,024 of <= 256 characters)."""
    return _route_cached(path) if len(path) <= 256 else _route(path)


def _route(path: str) -> tuple[str, str | None]:
    target = path.split("?", 1)[0]
    trimmed = target.lstrip("/")
    trailing = trimmed.endswith("/")
    trimmed = trimmed.rstrip("/")
    if trimmed == "pkix":
        return "cmp", None
    if trimmed == "crl/issuing.crl" and not trailing:
        return "crl", None
    if trimmed == "ocsp":
        return "ocsp", None
    if trimmed.startswith("ocsp/"):
        return "ocsp", trimmed[5:]
    if trimmed == ".well-known/cmp" or trimmed.startswith(".well-known/cmp/"):
        segments = trimmed.split("/")[2:]
        profile = None
        if len(segments) >= 2 and segments[0] == "p":
            profile = unquote(segments[1])
            segments = segments[2:]
            if not profile:
                return "none", None
        if len(segments) > 1 or (segments and segments[0] not in _OPERATIONS):
            return "none", None
        return "cmp", profile
    return "none", None


_route_cached = lru_cache(maxsize=1024)(_route)
_CMP_TYPE_BYTES = CMP_TYPE.encode()


@lru_cache(maxsize=256)
def _media_type(content_type: bytes) -> bytes:
    """The media type of a Content-Type value, lower-case, without parameters (cached: every
    client sends the same one or two values)."""
    return content_type.split(b";")[0].strip().lower()


class CaService:
    """HTTP front of one ``Authority``: routes, knobs, transaction ticks, counters."""

    def __init__(
        self,
        authority: Authority,
        *,
        config: ServerConfig | None = None,
        secrets: SecretLookup | None = None,
        trusted: tuple = (),
        vendor: tuple = (),
        untrusted: tuple = (),
        ra_trusted: tuple = (),
        announcer: Announcer | None = None,
        knobs: LoadKnobs | None = None,
        clock: Callable[[], float] = time.time,
        tick_interval: float = 1.0,
        metrics: ServiceObserver | None = None,
        kga: KeyGenerator | None = None,
        kga_profiles: tuple[str, ...] = (),
        rollover: RolloverWatch | None = None,
        announce_crl: bool = False,
    ) -> None:
        """``rollover`` watches the state dir for a root key rollover (``fleet ca rollover``),
        adopted live by the tick; ``announce_crl`` pushes a crlann for every new CRL. ``kga`` serves central key generation on every path (``kga_profiles`` ("*",)) or
        only under ``/p/<name>`` for the names in ``kga_profiles``."""
        self.authority = authority
        self.announcer = announcer  # pushes rann (and cann, ckuann, crlann) to the devices' URLs
        self.rollover = rollover
        self.announce_crl = announce_crl and announcer is not None
        self._crl_announced = -1  # the number of the last CRL announced
        self.config = config or ServerConfig()
        self.knobs = knobs or LoadKnobs()
        self.clock = clock
        self.tick_interval = tick_interval
        self.metrics = metrics
        self._rng = random.Random(self.knobs.seed)
        everywhere = kga if "*" in kga_profiles else None
        # Each mode's CmpServer, wrapped to take nested messages from ``ra_trusted`` RAs too.
        self.servers: dict[str, NestedServer] = {
            mode: NestedServer(authority.server(
                config=replace(self.config, mode=mode),  # type: ignore[arg-type]
                secrets=secrets, trusted=trusted, vendor=vendor, untrusted=untrusted, ra_trusted=ra_trusted,
                kga=everywhere,
            ))
            for mode in _MODES
        }
        for name in kga_profiles if everywhere is None else ():  # per-profile KGA: /p/<name>
            self.servers[name] = NestedServer(authority.server(
                config=replace(self.config, mode=name if name in _MODES else self.config.mode),  # type: ignore[arg-type]
                secrets=secrets, trusted=trusted, vendor=vendor, untrusted=untrusted, ra_trusted=ra_trusted, kga=kga,
            ))
        self.default = self.servers[self.config.mode]
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.http = Counter[str]()
        self.http_stats = HttpServerStats()
        self.base_url: str | None = None
        # Knobs known to be all off (LoadKnobs is frozen): the hot path skips asking again.
        self._quiet_knobs = self.knobs if not self.knobs.active else None

    # -- HTTP -----------------------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if self.metrics is None:  # one coroutine less per request when nothing observes
            return await self._handle(request)
        return await observed(self.metrics, self._handle, request)

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        # The usual request, a CMP POST with the knobs off (no latency to add), is answered
        # without awaiting (``_cmp_now``); anything else takes ``_respond``.
        response = self._cmp_now(request) if self.knobs is self._quiet_knobs else None
        if response is None:
            response = await self._respond(request)
        store = self.authority.store
        if store.dirty:  # nothing leaves before the records it follows are durable (module doc)
            try:
                await store.durable()
            except StoreError as exc:
                log.error("answer withheld, the certificate store cannot be written: %s", exc)
                return self._plain(503, "certificate store unavailable\n", headers=(("Retry-After", "1"),))
        return response

    async def _respond(self, request: HttpRequest) -> HttpResponse:
        kind, arg = route(request.path)
        if kind == "cmp":
            if request.method != "POST":
                return self._plain(405, "CMP takes POST\n", headers=(("Allow", "POST"),))
            return await self._cmp(request, arg)
        if kind == "crl":
            if request.method not in ("GET", "HEAD"):
                return self._plain(405, "GET the CRL\n", headers=(("Allow", "GET"),))
            self.http["crl"] += 1
            return HttpResponse(200, self.authority.crl.current_crl_der(), "application/pkix-crl")
        if kind == "ocsp":
            return self._ocsp(request, arg)
        return self._plain(404, "not found\n")

    def _cmp_now(self, request: HttpRequest) -> HttpResponse | None:
        """``_respond``'s answer to a CMP POST, when the knobs are off (nothing to await); None
        for every other request."""
        if request.method != "POST":
            return None
        kind, profile = route(request.path)
        if kind != "cmp":
            return None
        if _media_type(request.header(b"content-type") or b"") != _CMP_TYPE_BYTES:
            return self._plain(415, "Content-Type must be application/pkixcmp\n")
        return self._cmp_reply(request, self.servers.get(profile, self.default) if profile else self.default)

    async def _cmp(self, request: HttpRequest, profile: str | None) -> HttpResponse:
        if _media_type(request.header(b"content-type") or b"") != _CMP_TYPE_BYTES:
            return self._plain(415, "Content-Type must be application/pkixcmp\n")
        knobs = self.knobs
        defer = 0.0
        inject = False
        if knobs is not self._quiet_knobs and knobs.active:
            rng = self._rng
            if knobs.drop_fraction and rng.random() < knobs.drop_fraction:
                self.http["dropped"] += 1
                return HttpResponse(0, drop_connection=True)
            if knobs.http_503_fraction and rng.random() < knobs.http_503_fraction:
                self.http["503"] += 1
                return self._plain(503, "service unavailable (load-target knob)\n", headers=(("Retry-After", "1"),))
            if knobs.waiting_fraction and rng.random() < knobs.waiting_fraction:
                defer = knobs.check_after
            if knobs.error_fraction and rng.random() < knobs.error_fraction:
                inject = True
        server = self.servers.get(profile, self.default) if profile else self.default
        response = self._cmp_reply(request, server, defer, inject)
        if knobs.latency.kind != "none":
            delay = knobs.latency.sample(self._rng)
            if delay > 0:
                await trio.sleep(delay)
        return response

    def _cmp_reply(
        self, request: HttpRequest, server: NestedServer, defer: float = 0.0, inject: bool = False
    ) -> HttpResponse:
        """``server``'s answer to a CMP request, counted (and announced)."""
        if self.metrics is None:
            reply = server.handle(request.body, self.clock(), defer=defer, inject_error=inject)
            self._count(reply.outcome)
        else:
            started = time.perf_counter()
            reply = server.handle(request.body, self.clock(), defer=defer, inject_error=inject)
            self._count(reply.outcome, time.perf_counter() - started)
        for inner in server.inner_outcomes:  # the messages of a nested request, one by one
            self._count(inner)
        if self.announcer is not None:
            for outcome in (reply.outcome, *server.inner_outcomes):
                self._announce(outcome)
        # RFC 9811 §3.3: a body that is no PKIMessage is a client error, answered with a CMP error
        return HttpResponse(400 if reply.outcome.request == "malformed" else 200, reply.data, CMP_TYPE)

    def _announce(self, outcome: Outcome) -> None:
        """Queue the announcement an answer calls for: a revocation, an issued certificate."""
        announcer = self.announcer
        assert announcer is not None
        if outcome.status != "accepted" or outcome.serial is None:
            return
        if outcome.request == "rr":
            announcer.revoked(outcome.serial)
        elif outcome.response in ("ip", "cp", "kup"):
            announcer.issued(outcome.serial)

    def _ocsp(self, request: HttpRequest, arg: str | None) -> HttpResponse:
        ocsp = self.authority.ocsp
        self.http["ocsp"] += 1
        if request.method == "POST" and arg is None:
            body = ocsp.respond(request.body)
        elif request.method == "GET" and arg:
            try:
                body = ocsp.respond(base64.b64decode(unquote(arg), validate=True))
            except ValueError:
                body = ocsp.malformed_response_der
        else:
            return self._plain(405, "OCSP takes POST /ocsp or GET /ocsp/<base64>\n")
        return HttpResponse(200, body, "application/ocsp-response")

    def _plain(self, status: int, text: str, *, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        self.http[str(status)] += 1
        return HttpResponse(status, text.encode(), _TEXT, headers=headers)

    def _count(self, outcome: Outcome, seconds: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.request(outcome, seconds)
        fail = _fail_text(outcome.fail_info) if outcome.fail_info else ""
        self.outcomes[(outcome.request, outcome.status, fail)] += 1
        if outcome.status == "error" and "systemFailure" in outcome.fail_names and "injected" not in outcome.text:
            log.error("CMP %s failed inside the server: %s", outcome.request, outcome.text)

    # -- running --------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        for server in self.servers.values():
            for outcome in server.tick(now):
                self._count(outcome)
        orphans = self.authority.expire_unconfirmed(datetime.fromtimestamp(now, UTC), self._in_progress)
        if orphans:
            log.warning("rejected %d certificate(s) past their confirmation deadline that no transaction "
                        "was waiting for", len(orphans))
            for serial in orphans:
                self._count(Outcome("tick", "none", "confirm_timeout", FailInfo.systemUnavail.mask, serial))
        if self.rollover is not None:
            self._watch_rollover()
        if self.announce_crl:
            self._announce_new_crl()
        if self.metrics is not None:
            self.metrics.sample(self.statistics())

    def _watch_rollover(self) -> None:
        """Adopt a root key rollover (``fleet.ca.rollover``) committed or switched since the last
        tick, and push its ckuann when it is new to this process."""
        assert self.rollover is not None
        try:
            change = self.rollover.poll()
        except FleetError as exc:
            log.error("root key rollover not adopted: %s", exc)
            return
        if change is None:
            return
        update = change.update
        if change.hierarchy is not None:
            h = change.hierarchy
            self.authority.adopt(h, update)
            for server in self.servers.values():  # the KGA's signed key packages carry the chain too
                if server.server.kga is not None:
                    server.server.kga.chain = tuple(c for c in h.chain_for_issued_der if c != h.root_der)
            log.warning("root key rollover %s: the new root key is active", update.ident)
        else:
            self.authority.offer_root_update(update)
            log.warning("root key rollover %s: new root offered, switch at %s", update.ident,
                        datetime.fromtimestamp(update.switch_at, UTC).isoformat(timespec="seconds"))
        if change.new:
            self.announce_root_update()

    def announce_root_update(self) -> None:
        """Push a ckuann of the offered root key update to every device (none without one)."""
        update = self.authority.root_update
        if self.announcer is not None and update is not None:
            count = self.announcer.key_updated(update.announcement())
            log.warning("root key rollover %s announced to %d device(s)", update.ident, count)

    def _announce_new_crl(self) -> None:
        """A crlann when the CRL changed since the last one announced (built now if need be)."""
        assert self.announcer is not None
        crl = self.authority.crl.current()
        if self._crl_announced < 0:  # the CRL the CA started with is not news
            self._crl_announced = crl.number
        elif crl.number != self._crl_announced:
            self._crl_announced = crl.number
            self.announcer.crl_issued(crl.der)

    def _in_progress(self, transaction_id: bytes | None) -> bool:
        """Whether a CMP server still holds this transaction open (it settles its certificate)."""
        if transaction_id is None:
            return False
        for server in self.servers.values():
            state = server.state_of(transaction_id)
            if state is not None and state is not TxState.CLOSED:
                return True
        return False

    def recover(self) -> int:
        """Reject every certificate an earlier process left pending (module doc); how many."""
        count = self.authority.reject_abandoned(datetime.fromtimestamp(self.clock(), UTC))
        if count:
            log.warning("rejected %d certificate(s) left unconfirmed by an earlier run of the CA", count)
        return count

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_interval)
            self.tick()

    async def serve(
        self,
        host: str,
        port: int,
        *,
        max_body_bytes: int = 1_000_000,
        max_connections: int = 10_000,
        public_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (HTTPS with ``ssl_context``); ``task_status.started`` gets the port.

        Issued certificates point their CRL distribution point and OCSP URL at ``public_url``
        (default ``http://<host>:<bound port>``), set before the first request is served.
        Certificates an earlier process left pending are rejected first (``recover``).
        """
        self.recover()
        try:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    partial(
                        serve_http, self.handle, host, port, max_body_bytes=max_body_bytes,
                        max_connections=max_connections, stats=self.http_stats, ssl_context=ssl_context,
                    )
                )
                # No checkpoint between the bind and this: no request is served before it.
                scheme = "https" if ssl_context is not None else "http"
                self.base_url = public_url or f"{scheme}://{_url_host(host)}:{bound}"
                self.authority.set_base_url(self.base_url)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self.authority.store.run_flusher)
                if self.announcer is not None:
                    nursery.start_soon(self.announcer.run)
                    update = self.authority.root_update
                    if update is not None and not update.switched:  # devices learn before the switch
                        self.announce_root_update()
                task_status.started(bound)
        finally:
            self.authority.store.flush()

    def statistics(self) -> CaStatistics:
        return CaStatistics(
            servers={mode: s.statistics() for mode, s in self.servers.items()},
            outcomes=dict(self.outcomes),
            http=dict(self.http),
            connections=replace(self.http_stats),
            certificates=self.authority.store.counts_by_status(),
        )


@lru_cache(maxsize=256)
def _fail_text(fail_info: int) -> str:
    """The outcome counter's failInfo label: the bit names, comma-separated (cached)."""
    return ",".join(fail_info_names(fail_info))


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
