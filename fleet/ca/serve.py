"""Compose a CA from a ``CaConfig`` and serve it: the CA's composition root.

``build`` wires hierarchy, certificate store, authority and service; ``serve`` runs them in the
current trio run (in-process use); ``run`` is the process entry behind ``fleet ca serve`` and
``python -m fleet.ca``: it checks the ports first, prints where the CA listens and how clients
authenticate, and serves until SIGINT or SIGTERM.

A start that cannot listen leaves the state folder as it found it: the ports are bind-checked
before anything is written, and when another process wins the port between that check and the
real bind, whatever this start created is removed again.
"""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import ssl
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import trio
from cryptography import x509

from fleet.ca.announcer import Announcer, load_routes
from fleet.ca.authority import STORE_FILE, Authority
from fleet.ca.coap_service import serve_coap
from fleet.ca.config import CaConfig, CaConfigError
from fleet.ca.hierarchy import CaHierarchy
from fleet.ca.kga import build_kga, kga_profiles
from fleet.ca.metrics import CaMetrics
from fleet.ca.rollover import RolloverWatch, read_update
from fleet.ca.service import CaService, ServiceObserver
from fleet.ca.store import CertStore
from fleet.errors import FleetError
from fleet.files import load_certificates
from fleet.prometheus import metrics_host
from fleet.runtime import tune_gc
from fleet.tls import server_context

__all__ = ["build", "run", "serve", "tls_context"]


class _Inputs:
    """Every file the CA reads at start, read before anything is written."""

    def __init__(self, config: CaConfig) -> None:
        self.vendor = _certs(config.vendor_trust)
        if config.vendor_trust is not None and not self.vendor:
            raise FleetError(f"vendor trust file {config.vendor_trust} holds no certificate")
        self.trusted = tuple(c for path in config.trusted for c in _certs(path))
        self.untrusted = tuple(c for path in config.untrusted for c in _certs(path))
        self.ra_trusted = tuple(c for path in config.ra_trusted for c in _certs(path))
        self.tls = tls_context(config)


def _certs(path: Path | None) -> list[x509.Certificate]:
    return [] if path is None else load_certificates(path)


def _state(config: CaConfig) -> Path:
    if config.state is None:
        raise CaConfigError("state", "is needed to serve (the folder of the CA's keys and records)")
    return config.state


def tls_context(config: CaConfig) -> ssl.SSLContext | None:
    """The HTTPS context of ``tls_cert``/``tls_key`` (requiring client certificates under
    ``tls_client_ca`` when set), None for plain HTTP."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    return server_context(config.tls_cert, config.tls_key, config.tls_client_ca)


def build(
    config: CaConfig, *, metrics: ServiceObserver | None = None, inputs: _Inputs | None = None
) -> CaService:
    """Hierarchy (brought along, or loaded from or created in ``config.state``), store,
    authority and service. The caller closes ``service.authority`` when done."""
    state = _state(config)
    inputs = inputs or _Inputs(config)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if config.issuing_cert and config.issuing_key and config.signer_cert and config.signer_key:
        hierarchy = CaHierarchy.from_files(
            config.issuing_cert,
            config.issuing_key,
            config.signer_cert,
            config.signer_key,
            [config.chain] if config.chain else [],
        )
        watch = None
    else:
        hierarchy = CaHierarchy.load_or_create(state, key_type=config.key_type)
        watch = RolloverWatch(state, read_update(state))  # fleet ca rollover, adopted live
    authority = Authority(hierarchy, CertStore(state / STORE_FILE), validity=config.validity,
                          allow_key_reuse=config.allow_key_reuse)
    try:
        if watch is not None:
            authority.offer_root_update(watch.update)
        observer = getattr(metrics, "announcement", None)
        routes = load_routes(config.announce_routes) if config.announce_routes else None
        announcer = (Announcer(authority, config.announce_url, issued=config.announce_issued, routes=routes,
                               observer=observer) if config.announce_url else None)
        profiles = kga_profiles(config.kga, config.kga_profiles)
        kga = build_kga(
            state, hierarchy, key_type=config.kga_key_type, password_delivery=config.kga_password_delivery,
            pwri_iterations=config.kga_pwri_iterations, rsa_pool=config.kga_rsa_pool,
            kek_cache=config.kga_kek_cache,
        ) if profiles else None
        return CaService(
            authority,
            config=config.server_config(),
            secrets=config.shared_secrets(),
            trusted=inputs.trusted,
            vendor=tuple(inputs.vendor),
            untrusted=inputs.untrusted,
            ra_trusted=inputs.ra_trusted,
            announcer=announcer,
            knobs=config.knobs,
            metrics=metrics,
            kga=kga,
            kga_profiles=profiles,
            rollover=watch,
            announce_crl=config.announce_crl,
        )
    except BaseException:
        authority.close()
        raise


async def serve(
    config: CaConfig,
    *,
    metrics: ServiceObserver | None = None,
    task_status: trio.TaskStatus[CaService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Build the CA and serve it until cancelled; ``task_status.started`` gets the service
    (``service.base_url`` says where it listens)."""
    inputs = _Inputs(config)
    service = build(config, metrics=metrics, inputs=inputs)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_listen, service, config, inputs.tls)
            if config.coap_port is not None:
                await nursery.start(serve_coap, service, config.host, config.coap_port)
            task_status.started(service)
    finally:
        service.authority.close()


async def _listen(
    service: CaService,
    config: CaConfig,
    tls: ssl.SSLContext | None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    await service.serve(
        config.host,
        config.port,
        max_body_bytes=config.max_body_bytes,
        public_url=config.public_url,
        ssl_context=tls,
        task_status=task_status,
    )


def run(config: CaConfig) -> None:
    """Serve CMP, the CRL and OCSP until SIGINT or SIGTERM, saying where and how on stdout.

    Refusals are one ``FleetError`` each and leave the state folder as it was.
    """
    state = _state(config)
    inputs = _Inputs(config)
    # Bind-check the ports before the state folder is touched: a busy port is one line, no new files.
    _check_port(config.host, config.port)
    if config.coap_port is not None:
        _check_port(config.host, config.coap_port, udp=True)
    metrics = _metrics(config)
    before = _Contents(state)
    service = build(config, metrics=metrics, inputs=inputs)
    tune_gc()
    started: list[int] = []
    try:
        trio.run(
            _main,
            service,
            config,
            inputs.tls,
            _describe(service.authority.hierarchy, config) + _describe_rollover(service),
            started,
        )
    except (OSError, BaseExceptionGroup) as exc:
        bind_error = _bind_error(exc)
        if started or bind_error is None:
            raise
        # Lost a race for the port after the check above: undo this start and say why.
        service.authority.close()
        before.restore()
        if metrics is not None:
            metrics.close()
        raise _port_error(config.host, config.port, bind_error) from None
    finally:
        service.authority.close()


class _Contents:
    """What the state folder held before this start: a start that cannot listen leaves nothing new."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.existed = state.exists()
        self.names = {p.name for p in state.iterdir()} if state.is_dir() else set()

    def restore(self) -> None:
        if not self.existed:
            shutil.rmtree(self.state, ignore_errors=True)
            return
        for path in self.state.iterdir():
            if path.name not in self.names:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _port_error(host: str, port: int, exc: OSError, flag: str = "--port") -> FleetError:
    if exc.errno == errno.EADDRINUSE:
        return FleetError(
            f"port {port} is in use on {host} (choose another {flag}, or 0 for any free one)"
        )
    if exc.errno == errno.EACCES:
        return FleetError(
            f"no permission to listen on {host}:{port} (ports below 1024 need privileges)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return FleetError(
            f"cannot listen on {host}:{port}: {host} is not an address of this machine"
        )
    return FleetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _check_port(host: str, port: int, *, udp: bool = False) -> None:
    """Bind (and release) every address the server will listen on, as trio does (SO_REUSEADDR,
    IPv6 only on IPv6 sockets): a port another process listens on is refused here. ``udp``:
    the CoAP port (bound without SO_REUSEADDR, as ``serve_coap`` binds it)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise FleetError(f"--host {host!r}: cannot resolve it: {exc.strerror}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            if not udp:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
                if not udp:
                    probe.listen(1)
            except OSError as exc:
                raise _port_error(host, port, exc, "--coap-port" if udp else "--port") from None


def _bind_error(exc: BaseException) -> OSError | None:
    """The OSError inside ``exc`` (a bind failure surfaces wrapped in exception groups)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _bind_error(inner)
            if found is not None:
                return found
    return None


def _metrics(config: CaConfig) -> CaMetrics | None:
    if config.metrics_port is None:
        return None
    metrics = CaMetrics.serve(config.metrics_port, host=config.metrics_host)
    print(
        f"  metrics: http://{config.metrics_host or metrics_host()}:{config.metrics_port}/metrics",
        flush=True,
    )
    return metrics


async def _main(
    service: CaService,
    config: CaConfig,
    tls: ssl.SSLContext | None,
    lines: list[str],
    started: list[int],
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(_listen, service, config, tls))
            coap = None
            if config.coap_port is not None:
                coap = await nursery.start(serve_coap, service, config.host, config.coap_port)
            started.append(bound)
            base = service.base_url
            print(f"fleet CA listening on {base} (port {bound})")
            also = f"{base}/pkix/, /.well-known/cmp/p/<lcmpp|3gpp>/<op>"
            print(f"  CMP:  {base}/.well-known/cmp  (also {also})")
            if coap is not None:
                host = (base or "").split("://", 1)[-1].rsplit(":", 1)[0]
                print(f"  CoAP: coap://{host}:{coap.port}/.well-known/cmp  (RFC 9482, UDP port {coap.port})")
            print(f"  CRL:  {base}/crl/issuing.crl   OCSP: {base}/ocsp")
            for line in lines:
                print(line)
            sys.stdout.flush()
            async for _ in signals:
                print("fleet CA stopping", flush=True)
                nursery.cancel_scope.cancel()
                break


def _describe_rollover(service: CaService) -> list[str]:
    """A pending root key rollover (``fleet ca rollover --switch-at``) and when it switches."""
    update = service.authority.root_update
    if update is None or update.switched:
        return []
    when = datetime.fromtimestamp(update.switch_at, UTC).isoformat(timespec="seconds")
    return [f"  root key rollover {update.ident} offered (genm rootCaCert, ckuann); the new key is active from {when}"]


def _describe(hierarchy: CaHierarchy, config: CaConfig) -> list[str]:
    files = hierarchy.files
    ref = config.ref
    mac = config.secret is not None
    lines = [
        f"  root certificate: {files.root_cert}"
        if files.root_cert
        else "  root certificate: (in memory)",
        f"  RA signer: {hierarchy.signer.subject.rfc4514_string()} ({files.signer_cert})",
        f"  mode: {config.mode}",
        "  clients authenticate with:",
    ]
    if mac:
        who = f"reference {ref!r}" if ref else "any reference"
        lines.append(
            f"    - MAC (PBM/PBMAC1) with the --secret for {who}"
            + (f"  (openssl cmp -ref {ref} -secret ...)" if ref else "")
        )
    if config.master_secret is not None:
        lines.append(
            "    - MAC with per-device secrets: hex(HMAC-SHA256(master secret, reference)) as ASCII"
        )
    trusted = config.trusted
    lines.append(
        "    - signatures by certificates chaining to the root above"
        + (f" or to {', '.join(map(str, trusted))}" if trusted else "")
        + " (kur/rr: certificates this CA issued;"
        " its own certificates only while its records call them good)"
    )
    if config.ra_trusted:
        lines.append(
            f"    - RAs: nested messages and raVerified POP signed by certificates chaining to "
            f"{', '.join(map(str, config.ra_trusted))}"
        )
    if config.vendor_trust:
        lines.append(
            f"    - ir signed by vendor (IDevID) certificates chaining to {config.vendor_trust}"
        )
    if not mac and config.master_secret is None:
        lines.append("    (no MAC secret configured: MAC-protected requests are refused)")
    if config.announce_url:
        extra = (" and cann on issue" if config.announce_issued else "") + (", crlann on a new CRL" if config.announce_crl else "")
        lines.append(f"  announcements: rann on revocation{extra}, ckuann on a root key rollover"
                     f" pushed to {config.announce_url}")
    if config.kga or config.kga_profiles:
        where = "every path" if config.kga else ", ".join(f"/p/{n}" for n in kga_profiles(False, config.kga_profiles))
        lines.append(f"  central key generation (KGA, {config.kga_key_type} by default): {where}"
                     + ("" if config.kga_password_delivery else "; MAC-protected requests refused"))
    knobs = config.knobs
    if knobs.active:
        lines.append(
            f"  load knobs: latency {knobs.latency}, waiting {knobs.waiting_fraction:g} "
            f"(checkAfter {knobs.check_after:g} s), error {knobs.error_fraction:g}, "
            f"HTTP 503 {knobs.http_503_fraction:g}, dropped {knobs.drop_fraction:g}"
        )
    if config.max_transactions or config.issue_rate:
        caps = [f"{config.max_transactions} live transactions"] if config.max_transactions else []
        caps += [f"{config.issue_rate:g} certificate requests/s"] if config.issue_rate else []
        lines.append(f"  capacity caps (systemUnavail beyond): {', '.join(caps)}")
    return lines
