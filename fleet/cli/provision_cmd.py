"""``fleet provision MANIFEST --server URL --out DIR``: enroll a batch of real devices, resumably.

``fleet.cli.main`` mounts ``provision`` as the top-level ``fleet provision`` command.
Exit status: 0 when every device holds a confirmed certificate, 1 when some do not (or on an
error), 130 on Ctrl-C (rerun the same command to resume).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import trio
import typer

from fleet.bounds import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, PORT, POSITIVE
from fleet.cli.usage import (
    Pkcs11Module,
    Pkcs11Pin,
    Pkcs11Token,
    ProxyOpt,
    TlsCert,
    TlsKey,
    TlsKeyPass,
    TlsTrusted,
    bounded,
    examples,
    tls_client,
)
from fleet.connect import is_coap, probe
from fleet.errors import FleetError
from fleet.files import load_certificates
from fleet.load.metrics import FleetMetrics
from fleet.pkcs11 import Token, TokenError, token_key_spec
from fleet.provision import outputs
from fleet.provision.journal import Journal
from fleet.provision.manifest import CertAuth, DeviceSpec, ManifestError, load_manifest
from fleet.provision.runner import Progress, Provisioner, ProvisionOptions, RunStats
from fleet.provision.summary import summarize
from fleet.secrets import read_secret
from fleet.transport import TransportError

EPILOG = examples(
    "fleet provision devices.csv --dry-run",
    "fleet provision devices.csv --out issued/ --trusted ca-root.pem \\",
    "    --server http://ca.example:8080/.well-known/cmp",
    "fleet ca serve --dir ca-state --port 8081 --secret pass:demo &",
    "export GNB_0001_SECRET=demo GNB_0002_SECRET=demo",
    "fleet provision profiles/provision-example.csv --out issued/ \\",
    "    --server http://127.0.0.1:8081/.well-known/cmp",
)

JOURNAL_FILE = "journal.sqlite"
_TABLE_COLUMNS = ("id", "outcome", "operation", "auth", "serial", "requests", "fail_info", "error")


class ProvisionUsageError(FleetError):
    """Options that cannot work together."""


def provision(
    manifest: Annotated[Path, typer.Argument(metavar="MANIFEST", help="CSV with a header row, or JSON Lines (.jsonl).", show_default=False)],
    server: Annotated[str | None, typer.Option("--server", metavar="URL", help="CA URL: http://, https:// or coap:// (see the examples).  [required unless --dry-run]")] = None,
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="Output folder: one subfolder per device, summary.json.  [required unless --dry-run]")] = None,
    journal: Annotated[Path | None, typer.Option("--journal", metavar="FILE", help="Journal file (default OUT/journal.sqlite).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only check the manifest and options; send nothing.")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", callback=bounded(COUNT), help="Devices in progress at once.")] = 16,
    rate: Annotated[float | None, typer.Option("--rate", callback=bounded(POSITIVE), help="At most this many requests started per second.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", callback=bounded(POSITIVE), help="Seconds for one transaction, polling included.")] = 60.0,
    max_attempts: Annotated[int, typer.Option("--max-attempts", callback=bounded(COUNT), help="Tries per device and run on transient failures.")] = 8,
    backoff: Annotated[float, typer.Option("--backoff", callback=bounded(NON_NEGATIVE), help="First retry waits up to this many seconds (doubling, jittered).")] = 0.5,
    backoff_max: Annotated[float, typer.Option("--backoff-max", callback=bounded(NON_NEGATIVE), help="Longest wait between retries.")] = 30.0,
    key_pass: Annotated[str | None, typer.Option("--key-pass", metavar="SECRET", help="Encrypt device keys (and PKCS#12): pass:, env: or file:.")] = None,
    key_ahead: Annotated[int, typer.Option("--key-ahead", metavar="N", callback=bounded(NON_NEGATIVE_INT), help="Make the next N devices' keys ahead in worker processes (in memory; written when the device starts).")] = 0,
    p12: Annotated[bool, typer.Option("--p12", help="Also write device.p12 (key, certificate, chain).")] = False,
    trusted: Annotated[list[Path] | None, typer.Option("--trusted", metavar="PEM", help="CA root(s) that sign responses (needed for IDevID devices).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="lcmpp (RFC 9483) or 3gpp (TS 33.310).")] = "lcmpp",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress on stderr.")] = True,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for retry jitter (tests).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", callback=bounded(PORT), help="Serve Prometheus /metrics on this port while provisioning.")] = None,
    metrics_host: Annotated[str | None, typer.Option("--metrics-host", metavar="ADDR", help="Address /metrics binds to (default: $FLEET_METRICS_HOST, else 127.0.0.1; 0.0.0.0 exposes it to the network).")] = None,
    proxy: ProxyOpt = None,
    tls_trusted: TlsTrusted = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_key_pass: TlsKeyPass = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Start even when --server cannot be connected to (by default provisioning stops at once, in one line, nothing written).")] = False,
    pkcs11_module: Pkcs11Module = None,
    pkcs11_token: Pkcs11Token = None,
    pkcs11_pin: Pkcs11Pin = None,
) -> None:
    """Enroll every device listed in MANIFEST (CSV or JSON Lines); rerun the same command to resume.

    --server and --out are required (not with --dry-run). Manifest columns, lower-case, empty
    cells absent; relative paths are taken from the manifest's folder:

    \b
      id            device id: letters, digits, '.', '_', '-' (its folder)
      subject       /CN=a/O=b or CN=a,O=b (subject and/or sans required)
      sans          DNS:host, IP:addr, URI:..., comma or space separated
      ref, secret   MAC: reference (default: id; hex:.. binary), secret as pass:,
                    env: or file:
      cert, key     IDevID: vendor certificate (its chain may follow it) and key
      key_pass      passphrase (pass:, env:, file:) of key
      chain         certificates sent after cert's chain (built from cert's file,
                    chain and --trusted)
      key_type      key to generate: ec:P-256 (default), ec:P-384, rsa:2048 etc.
      central_key   key type the CA generates (central key generation) instead
      csr           PKCS#10 request (p10cr): the device keeps its own key
      csr_key       the CSR's key, only to revoke an orphaned certificate
      profile       CMP profile: requests go to <server path>/p/<profile>/<op>
      path          request path replacing the server URL's path
      cert_profile  certProfile put in generalInfo (RFC 9483)
      sender        MAC: header sender (default: ref as a name, else CN=<ref>)
      recipient     header recipient name (default: the NULL-DN)
      message_time  false: no messageTime in the header
      max_iterations  cap on a MAC response's iterations (default: PBMAC1
                    1000000, PasswordBasedMac 100000)

    Each device gets OUT/<id>/key.pem (0600), cert.pem, chain.pem, ca.pem; OUT/summary.json
    lists every outcome. Exit status 0 when every device holds a confirmed certificate.
    """
    devices = _checked_manifest(manifest)
    anchors = tuple(c for p in trusted or [] for c in load_certificates(p))
    if any(isinstance(d.auth, CertAuth) for d in devices) and not anchors and mode != "3gpp":
        raise ProvisionUsageError("IDevID devices need --trusted (the CA root that signs the responses)")
    if mode not in ("lcmpp", "3gpp"):
        raise ProvisionUsageError(f"--mode must be lcmpp or 3gpp, not {mode!r}")
    if concurrency < 1 or max_attempts < 1 or timeout <= 0 or (rate is not None and rate <= 0):
        raise ProvisionUsageError("--concurrency, --max-attempts, --timeout and --rate must be positive")
    password = read_secret(key_pass) if key_pass else None
    if pkcs11_module is not None and (pkcs11_token is None or pkcs11_pin is None):
        raise ProvisionUsageError("--pkcs11-module needs --pkcs11-token and --pkcs11-pin")
    if pkcs11_module is not None and (p12 or key_pass):
        raise ProvisionUsageError("keys in a PKCS#11 token never leave it: no --p12 or --key-pass with --pkcs11-module")
    central = [d.id for d in devices if d.central_key is not None]
    if pkcs11_module is not None and central:
        raise ProvisionUsageError(f"central_key (device {central[0]}) delivers the key to a file; it cannot go with"
                                  " --pkcs11-module")
    if pkcs11_module is not None:  # a key type the token cannot make: named now, not per device later
        for device in devices:
            try:
                if device.key_type is not None:
                    token_key_spec(device.key_type)
            except TokenError as exc:
                raise ProvisionUsageError(f"device {device.id}: {exc}") from None
    if dry_run:
        kinds = {k: sum(1 for d in devices if f"{d.operation}/{d.auth_kind}" == k)
                 for k in sorted({f"{d.operation}/{d.auth_kind}" for d in devices})}
        print(f"manifest {manifest}: {len(devices)} devices OK ("
              + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")")
        return
    if server is None or out is None:
        raise ProvisionUsageError("give --server and --out (or --dry-run)")
    tls = tls_client(tls_trusted, tls_cert, tls_key, tls_key_pass)
    ssl_context = tls.context() if tls is not None else None
    token = Token(pkcs11_module, pkcs11_token, pkcs11_pin) if pkcs11_module is not None else None  # type: ignore[arg-type]
    if not keep_going and not is_coap(server):  # else every device would fail with the same error
        try:
            probe(server, min(10.0, timeout), proxy=proxy, ssl_context=ssl_context)
        except TransportError as exc:
            raise ProvisionUsageError(f"CA unreachable, nothing sent: {exc} (--keep-going starts anyway)") from None
    try:  # before anything is sent
        outputs.prepare_out(out)
    except outputs.OutputError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--out'") from None
    jpath = journal or out / JOURNAL_FILE
    metrics = None if metrics_port is None else FleetMetrics.serve(metrics_port, worker="provision", host=metrics_host)
    options = ProvisionOptions(
        server=server, out=out, concurrency=concurrency, rate=rate, timeout=timeout,
        max_attempts=max_attempts, backoff_base=backoff, backoff_max=backoff_max, key_pass=password,
        p12=p12, trusted=anchors, mode=mode, progress=_progress_printer() if progress else None, seed=seed,
        observer=metrics, proxy=proxy, token=token, ssl_context=ssl_context, key_ahead=key_ahead,
    )
    with Journal.open(jpath, server=server) as jr:
        runner = Provisioner(devices, jr, options)
        interrupted = False
        stats: RunStats
        try:
            stats = trio.run(runner.run)
        except KeyboardInterrupt:
            interrupted = True
            stats = runner.stats
        summary = summarize(devices, jr, stats, interrupted=interrupted, out=out)
    if metrics is not None:
        metrics.finish()  # let Prometheus read the final counts (bounded wait)
    path = outputs.write_summary(out, summary)
    print(outputs.run_report(summary, path, _TABLE_COLUMNS))
    if interrupted:
        print("fleet: interrupted; rerun the same command to resume", file=sys.stderr)
        raise typer.Exit(130)
    if not summary["complete"]:
        raise typer.Exit(1)


def _checked_manifest(path: Path) -> list[DeviceSpec]:
    try:
        return load_manifest(path)
    except ManifestError as exc:
        for problem in exc.problems[1:20]:
            print(f"fleet: manifest {path}: also {problem}", file=sys.stderr)
        if len(exc.problems) > 20:
            print(f"fleet: ... {len(exc.problems) - 20} more problems", file=sys.stderr)
        raise


def _progress_printer() -> Callable[[Progress], None]:
    tty = sys.stderr.isatty()

    def show(p: Progress) -> None:
        end = "\r" if tty and p.confirmed + p.failed < p.total else "\n"
        print(p.line(), end=end, file=sys.stderr, flush=True)

    return show
