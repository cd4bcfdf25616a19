"""``fleet ca``: run the embedded CMP CA (``serve``) and read its records (``stats``)."""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import ssl
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import trio
import typer
from cryptography import x509

from fleet.ca.authority import STORE_FILE, Authority
from fleet.ca.metrics import CaMetrics
from fleet.ca.pki import CaHierarchy
from fleet.ca.service import CaService, Latency, LoadKnobs
from fleet.ca.store import CertStore
from fleet.cli.usage import bounded, examples
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.errors import FleetError
from fleet.files import load_certificates
from fleet.metrics import metrics_host
from fleet.profiles import CA_BOUNDS, COUNT, NON_NEGATIVE, PORT
from fleet.runtime import tune_gc
from fleet.secrets import read_secret

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The embedded CMP CA/RA (loopback runs, load target).",
                  epilog=examples("fleet ca serve --dir ca-state --port 8080 --master-secret pass:demo",
                                  "fleet ca stats --dir ca-state"))

_SECRET_HELP = "as pass:TEXT, env:VAR or file:PATH (never printed)"


def _certs(path: Path | None) -> list[x509.Certificate]:
    return [] if path is None else load_certificates(path)


# The crash contract (fleet.ca.service), for operators: one paragraph, wrapped by the terminal.
_SERVE_HELP = (
    "Serve CMP (/.well-known/cmp, /pkix/), the CRL and OCSP until interrupted.\n\n"
    "Crash contract: no answer leaves before the records it depends on are committed, so a "
    "kill -9 loses only what nobody was told (an ip or pkiConf not yet sent). Until its certConf "
    "a certificate is revoked with reason certificateHold in OCSP; it is rejected at its "
    "--confirm-wait deadline, and at start every certificate still pending is rejected, so a "
    "crash never leaves a valid unconfirmed certificate past its deadline."
)


@app.command(help=_SERVE_HELP, short_help="Serve CMP, the CRL and OCSP until interrupted.", epilog=examples(
    "fleet ca serve --dir ca-state --port 8080 --master-secret pass:demo",
    "fleet ca serve --dir ca-state --port 0 --secret pass:demo --ref dev-1",
    "fleet ca serve --dir ca-state --latency uniform:0.01:0.05 \\",
    "    --error-fraction 0.01 --metrics-port 9200",
))
def serve(
    state: Annotated[Path, typer.Option("--dir", help="State directory: CA keys, certificates, records.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=bounded(PORT), help="Port (0: any free port, printed at start).")] = 8080,
    secret: Annotated[str | None, typer.Option(help=f"Shared MAC secret {_SECRET_HELP}.")] = None,
    ref: Annotated[str | None, typer.Option(help="Reference (senderKID) the --secret belongs to; "
                                                    "without it the secret answers any reference.")] = None,
    master_secret: Annotated[str | None, typer.Option(
        help=f"Master secret for per-device MAC secrets hex(HMAC-SHA256(master, reference)), {_SECRET_HELP}.")] = None,
    vendor_trust: Annotated[Path | None, typer.Option(
        help="PEM file of vendor (IDevID) trust anchors: ir signed by certificates chaining to them is accepted.")] = None,
    trusted: Annotated[list[Path] | None, typer.Option(metavar="PEM",
        help="PEM file of extra trust anchors for signed requests (the CA's own root is always trusted); "
             "repeatable.")] = None,
    untrusted: Annotated[list[Path] | None, typer.Option(metavar="PEM",
        help="PEM file of intermediate certificates for paths; repeatable.")] = None,
    mode: Annotated[str, typer.Option(help="lcmpp (root in caPubs for MAC ir) or 3gpp (root in extraCerts).")] = "lcmpp",
    key_type: Annotated[str, typer.Option(help="Key type of a new hierarchy (ec:P-256, ec:P-384, rsa:2048, ed25519).")] = "ec:P-256",
    validity_days: Annotated[int, typer.Option(callback=bounded(CA_BOUNDS["validity_days"]), help="Validity of issued certificates.")] = 365,
    issuing_cert: Annotated[Path | None, typer.Option(help="Bring your own issuing CA certificate (with --issuing-key, --signer-cert, --signer-key).")] = None,
    issuing_key: Annotated[Path | None, typer.Option(help="Issuing CA key file.")] = None,
    signer_cert: Annotated[Path | None, typer.Option(help="CMP protection (RA) certificate file.")] = None,
    signer_key: Annotated[Path | None, typer.Option(help="CMP protection (RA) key file.")] = None,
    chain: Annotated[Path | None, typer.Option(help="Issuing CA's issuers, nearest first, root last (PEM).")] = None,
    public_url: Annotated[str | None, typer.Option(help="Base URL put into certificates for CRL and OCSP.")] = None,
    confirm_wait: Annotated[float, typer.Option(callback=bounded(CA_BOUNDS["confirm_wait"]), help="Seconds a certConf may take before the certificate is rejected.")] = 60.0,
    implicit_confirm: Annotated[bool, typer.Option(help="Grant implicit confirmation when asked.")] = True,
    max_time_skew: Annotated[float, typer.Option(callback=bounded(NON_NEGATIVE), help="Allowed messageTime skew in seconds (0: unchecked).")] = 300.0,
    max_iterations: Annotated[int, typer.Option(callback=bounded(COUNT), help="Cap on PBM/PBMAC1 iteration counts.")] = 10_000,
    max_transactions: Annotated[int, typer.Option(callback=bounded(CA_BOUNDS["max_transactions"]), help="Concurrent transactions beyond which new ones get systemUnavail (0: no cap).")] = 0,
    max_body_bytes: Annotated[int, typer.Option(callback=bounded(COUNT), help="Largest request body accepted (HTTP 413 beyond).")] = 1_000_000,
    allow_replaced_signers: Annotated[bool, typer.Option(
        "--allow-replaced-signers",
        help="Let a certificate replaced by a confirmed kur go on signing requests (by default it may "
             "only revoke itself; it stays valid for CRL and OCSP either way).")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this certificate chain (PEM, leaf first).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert.")] = None,
    latency: Annotated[str, typer.Option(help="Added latency: none, fixed:S, uniform:A:B, exp:MEAN, lognormal:MEDIAN:SIGMA.")] = "none",
    waiting_fraction: Annotated[float, typer.Option(callback=bounded(CA_BOUNDS["waiting_fraction"]), help="Fraction of new requests answered 'waiting' (polling).")] = 0.0,
    check_after: Annotated[float, typer.Option(callback=bounded(CA_BOUNDS["check_after"]), help="Seconds until a 'waiting' response is ready.")] = 1.0,
    error_fraction: Annotated[float, typer.Option(callback=bounded(CA_BOUNDS["error_fraction"]), help="Fraction of new requests answered with a CMP error.")] = 0.0,
    http_503_fraction: Annotated[float, typer.Option(callback=bounded(CA_BOUNDS["http_503_fraction"]), help="Fraction of CMP requests answered HTTP 503.")] = 0.0,
    drop_fraction: Annotated[float, typer.Option(callback=bounded(CA_BOUNDS["drop_fraction"]), help="Fraction of CMP requests whose connection is dropped.")] = 0.0,
    seed: Annotated[int | None, typer.Option(callback=bounded(CA_BOUNDS["seed"]), help="Seed for the knobs' random draws.")] = None,
    metrics_port: Annotated[int | None, typer.Option(callback=bounded(PORT), help="Serve Prometheus /metrics (fleet_ca_*) on this port.")] = None,
    metrics_host: Annotated[str | None, typer.Option(metavar="ADDR", help="Address /metrics binds to (default: $FLEET_METRICS_HOST, else 127.0.0.1; 0.0.0.0 exposes it to the network).")] = None,
) -> None:
    """Serve CMP (/.well-known/cmp, /pkix/), the CRL and OCSP until interrupted."""
    if mode not in ("lcmpp", "3gpp"):
        raise FleetError(f"--mode must be lcmpp or 3gpp, not {mode!r}")
    if validity_days < 1:
        raise FleetError("--validity-days must be at least 1")
    table: dict[bytes, bytes] = {}
    default = None
    if secret is not None:
        value = read_secret(secret)
        if ref is not None:
            table[ref.encode()] = value
        else:
            default = value
    elif ref is not None:
        raise FleetError("--ref needs --secret")
    master = read_secret(master_secret) if master_secret is not None else None
    knobs = LoadKnobs(
        latency=Latency.parse(latency), waiting_fraction=waiting_fraction, check_after=check_after,
        error_fraction=error_fraction, http_503_fraction=http_503_fraction, drop_fraction=drop_fraction,
        seed=seed,
    )
    config = ServerConfig(
        mode=mode,  # type: ignore[arg-type]
        confirm_wait=confirm_wait,
        grant_implicit_confirm=implicit_confirm,
        max_time_skew=max_time_skew or None,
        max_iterations=max_iterations,
        max_transactions=max_transactions or None,
        allow_replaced_signers=allow_replaced_signers,
    )
    vendor = _certs(vendor_trust)
    if vendor_trust is not None and not vendor:
        raise FleetError(f"vendor trust file {vendor_trust} holds no certificate")
    own = [issuing_cert, issuing_key, signer_cert, signer_key]
    if any(own) and not all(own):
        raise FleetError("--issuing-cert, --issuing-key, --signer-cert and --signer-key go together")
    if metrics_port is not None and metrics_port == port and port != 0:
        raise typer.BadParameter(f"{metrics_port} is also --port", param_hint="'--metrics-port'")
    # Bind-check the ports before --dir is touched: a busy port is one line and no new files.
    _check_port(host, port)
    metrics = _metrics(metrics_port, metrics_host)
    before = _Contents(state)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    if all(own):
        assert issuing_cert and issuing_key and signer_cert and signer_key
        hierarchy = CaHierarchy.from_files(issuing_cert, issuing_key, signer_cert, signer_key,
                                           [chain] if chain else [])
    else:
        hierarchy = CaHierarchy.load_or_create(state, key_type=key_type)
    authority = Authority(hierarchy, CertStore(state / STORE_FILE), validity=timedelta(days=validity_days))
    service = CaService(
        authority, config=config,
        secrets=SharedSecrets(table, default=default, master=master) if (table or default or master) else None,
        trusted=tuple(c for path in trusted or () for c in _certs(path)), vendor=tuple(vendor),
        untrusted=tuple(c for path in untrusted or () for c in _certs(path)), knobs=knobs,
        metrics=metrics,
    )
    if (tls_cert is None) != (tls_key is None):
        raise FleetError("--tls-cert and --tls-key go together")
    tls = None
    if tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise FleetError(f"cannot load --tls-cert/--tls-key: {exc}") from None
    tune_gc()
    started: list[int] = []
    try:
        trio.run(_run, service, host, port, max_body_bytes, public_url, tls, _describe(
            hierarchy, ref, default is not None or bool(table), master is not None, vendor_trust, trusted, mode, knobs),
            started)
    except (OSError, BaseExceptionGroup) as exc:
        bind_error = _bind_error(exc)
        if started or bind_error is None:
            raise
        # Lost a race for the port after the check above: undo this start and say why.
        authority.close()
        before.restore()
        if metrics is not None:
            metrics.close()
        raise _port_error(host, port, bind_error) from None
    finally:
        authority.close()


class _Contents:
    """What ``--dir`` held before this start, so a start that cannot listen leaves nothing new."""

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


def _port_error(host: str, port: int, exc: OSError) -> FleetError:
    if exc.errno == errno.EADDRINUSE:
        return FleetError(f"port {port} is in use on {host} (choose another --port, or 0 for any free one)")
    if exc.errno == errno.EACCES:
        return FleetError(f"no permission to listen on {host}:{port} (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return FleetError(f"cannot listen on {host}:{port}: {host} is not an address of this machine")
    return FleetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _check_port(host: str, port: int) -> None:
    """Bind (and release) every address the server will listen on, as trio does (SO_REUSEADDR,
    IPv6 only on IPv6 sockets): a port another process listens on is refused here."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FleetError(f"--host {host!r}: cannot resolve it: {exc.strerror}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
                probe.listen(1)
            except OSError as exc:
                raise _port_error(host, port, exc) from None


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


def _metrics(port: int | None, host: str | None) -> CaMetrics | None:
    if port is None:
        return None
    metrics = CaMetrics.serve(port, host=host)
    print(f"  metrics: http://{host or metrics_host()}:{port}/metrics", flush=True)
    return metrics


async def _run(service: CaService, host: str, port: int, max_body: int, public_url: str | None,
               tls: ssl.SSLContext | None, lines: list[str], started: list[int]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(_serve, service, host, port, max_body, public_url, tls)
            started.append(bound)
            base = service.base_url
            print(f"fleet CA listening on {base} (port {bound})")
            print(f"  CMP:  {base}/.well-known/cmp  (also {base}/pkix/, /.well-known/cmp/p/<lcmpp|3gpp>/<op>)")
            print(f"  CRL:  {base}/crl/issuing.crl   OCSP: {base}/ocsp")
            for line in lines:
                print(line)
            sys.stdout.flush()
            async for _ in signals:
                print("fleet CA stopping", flush=True)
                nursery.cancel_scope.cancel()
                break


async def _serve(service: CaService, host: str, port: int, max_body: int, public_url: str | None,
                 tls: ssl.SSLContext | None, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    await service.serve(host, port, max_body_bytes=max_body, public_url=public_url, ssl_context=tls,
                        task_status=task_status)


def _describe(hierarchy: CaHierarchy, ref: str | None, mac: bool, master: bool,
              vendor: Path | None, trusted: list[Path] | None, mode: str, knobs: LoadKnobs) -> list[str]:
    files = hierarchy.files
    lines = [
        f"  root certificate: {files.root_cert}" if files.root_cert else "  root certificate: (in memory)",
        f"  RA signer: {hierarchy.signer.subject.rfc4514_string()} ({files.signer_cert})",
        f"  mode: {mode}",
        "  clients authenticate with:",
    ]
    if mac:
        who = f"reference {ref!r}" if ref else "any reference"
        lines.append(f"    - MAC (PBM/PBMAC1) with the --secret for {who}"
                     + (f"  (openssl cmp -ref {ref} -secret ...)" if ref else ""))
    if master:
        lines.append("    - MAC with per-device secrets: hex(HMAC-SHA256(master secret, reference)) as ASCII")
    lines.append("    - signatures by certificates chaining to the root above"
                 + (f" or to {', '.join(map(str, trusted))}" if trusted else "") + " (kur/rr: certificates this CA issued;"
                 " its own certificates only while its records call them good)")
    if vendor:
        lines.append(f"    - ir signed by vendor (IDevID) certificates chaining to {vendor}")
    if not mac and not master:
        lines.append("    (no MAC secret configured: MAC-protected requests are refused)")
    if knobs.active:
        lines.append(
            f"  load knobs: latency {knobs.latency}, waiting {knobs.waiting_fraction:g} "
            f"(checkAfter {knobs.check_after:g} s), error {knobs.error_fraction:g}, "
            f"HTTP 503 {knobs.http_503_fraction:g}, dropped {knobs.drop_fraction:g}"
        )
    return lines


@app.command(epilog=examples("fleet ca stats --dir ca-state"))
def stats(
    state: Annotated[Path, typer.Option("--dir", help="State directory of a CA.")],
) -> None:
    """Print the CA's certificate counts by status."""
    path = state / STORE_FILE
    if not path.exists():
        raise FleetError(f"no certificate store in {state} (run `fleet ca serve --dir {state}` first)")
    store = CertStore(path)
    try:
        counts = store.counts_by_status()
    finally:
        store.close()
    total = sum(counts.values())
    for status in ("pending", "issued", "revoked", "rejected"):
        print(f"{status:<9} {counts.get(status, 0)}")
    print(f"{'total':<9} {total}")


__all__ = ["app"]
