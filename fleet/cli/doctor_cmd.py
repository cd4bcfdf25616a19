"""``fleet doctor [--server URL]``: check a CA and this machine before a run, and say what to fix.

Each check prints one line, ``ok``, ``warn`` or ``FAIL``, and for a failure the fix on the next
line; the exit status is 1 when anything failed. With credentials (``--ref/--secret`` or
``--cert/--key`` and ``--trusted``) a genm caCerts round trip checks the MAC or signature setup
end to end; without them an unknown MAC sender still shows whether the CA speaks CMP (it must
refuse it). The CA's messageTime gives the clock skew.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

import trio
import typer

from fleet.bounds import COUNT
from fleet.cli.cmp_cmd import (
    Cert,
    CmpOptions,
    Key,
    Ref,
    Secret,
    Timeout,
    TlsCert,
    TlsKey,
    TlsKeyPass,
    TlsTrusted,
    Trusted,
)
from fleet.cli.usage import ProxyOpt, bounded, examples
from fleet.cmp import genm, messages, oids
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.errors import CmpError, UnverifiedRefusal
from fleet.cmp.messages import InfoTypeAndValue
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import GeneralRequest
from fleet.errors import FleetError
from fleet.exchange import run_transaction
from fleet.http.client import CmpHttpClient, CmpHttpResponse
from fleet.load.profiles import load_profile
from fleet.transport import TransportError

EPILOG = examples(
    "fleet doctor",
    "fleet doctor --server http://127.0.0.1:8080/.well-known/cmp",
    "fleet doctor --server http://127.0.0.1:8080/.well-known/cmp \\\n"
    "    --ref dev-00000001 --secret env:DEVICE_SECRET",
    "fleet doctor --server https://ca.example/.well-known/cmp \\\n"
    "    --cert device.pem --key device.key --trusted root.pem \\\n"
    "    --tls-trusted tls-root.pem --profile profiles/steady.toml",
)

SKEW_LIMIT = 300.0  # seconds: beyond this CAs refuse requests (badTime) and fleet warns
_FD_RESERVE = 256  # descriptors kept for files, the journal, metrics and the CA's own


@dataclass
class Report:
    """The checks so far; ``failed`` decides the exit status."""

    failed: int = 0
    warned: int = 0

    def ok(self, what: str) -> None:
        print(f"ok    {what}")

    def warn(self, what: str, fix: str) -> None:
        self.warned += 1
        print(f"warn  {what}\n      fix: {fix}")

    def fail(self, what: str, fix: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}\n      fix: {fix}")


def doctor(
    server: Annotated[str | None, typer.Option("--server", metavar="URL", help="CA URL to check (without it only this machine is checked).")] = None,
    ref: Ref = None,
    secret: Secret = None,
    cert: Cert = None,
    key: Key = None,
    trusted: Trusted = None,
    tls_trusted: TlsTrusted = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_key_pass: TlsKeyPass = None,
    proxy: ProxyOpt = None,
    timeout: Timeout = 10.0,
    profile: Annotated[Path | None, typer.Option("--profile", metavar="FILE", help="Load profile whose max_in_flight and max_connections to check the file descriptor limit against.")] = None,
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", callback=bounded(COUNT), help="Transactions in flight to plan for (default: the --profile's, else 1000).")] = None,
) -> None:
    """Check a CA before a run: reachability, TLS, a genm caCerts round trip, the MAC or signature
    setup, clock skew against the CA's messageTime, and the file descriptor limit against
    max_in_flight. Prints what to fix; exit 1 when a check failed."""
    report = Report()
    _check_fd_limit(report, profile, max_in_flight)
    if server is None:
        print("note  no --server: the CA was not checked")
    else:
        options = CmpOptions(server=server, ref=ref, secret=secret, cert=cert, key=key, trusted=trusted,
                             tls_trusted=tls_trusted, tls_cert=tls_cert, tls_key=tls_key, tls_key_pass=tls_key_pass,
                             timeout=timeout,
                             proxy=proxy)
        _check_ca(report, options)
    summary = f"{report.failed} failed, {report.warned} warnings"
    print(f"doctor: {summary}" if report.failed or report.warned else "doctor: all checks passed")
    if report.failed:
        raise typer.Exit(1)


def _check_fd_limit(report: Report, profile: Path | None, max_in_flight: int | None) -> None:
    wanted = max_in_flight
    if wanted is None and profile is not None:
        loaded = load_profile(profile)
        wanted = min(loaded.max_in_flight, loaded.connections)  # one connection per transaction at most
    wanted = wanted or 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted + _FD_RESERVE:
        report.ok(f"file descriptors: limit {soft if soft != resource.RLIM_INFINITY else 'unlimited'} "
                  f"covers {wanted} connections in flight")
        return
    need = wanted + _FD_RESERVE
    can = hard == resource.RLIM_INFINITY or hard >= need
    fix = (f"raise it before the run: ulimit -n {need}" if can
           else f"the hard limit is {hard}: raise it (limits.conf, systemd LimitNOFILE={need}) or lower max_in_flight")
    report.fail(f"file descriptors: limit {soft} < {need} ({wanted} in flight + {_FD_RESERVE} spare)", fix)


def _check_ca(report: Report, options: CmpOptions) -> None:
    tls = options.ssl_context()
    https = options.server.lower().startswith("https://")
    client = CmpHttpClient(options.server, max_connections=1, request_timeout=options.timeout,
                           connect_timeout=min(options.timeout, 10.0), ssl_context=tls, proxy=options.proxy)
    try:
        trio.run(client.probe)
    except TransportError as exc:
        if exc.kind == "tls":
            report.ok(f"reachable: {client.host}:{client.port} accepts connections")
            fix = ("give --tls-cert and --tls-key with a client certificate the CA's TLS server trusts"
                   " (--tls-key-pass for an encrypted key)" if "client certificate" in exc.problem else
                   "give --tls-trusted with the CA certificate that issued the server's TLS certificate"
                   " (or set SSL_CERT_FILE), or check the URL's scheme")
            report.fail(f"TLS: {exc.problem}", fix)
        else:
            report.fail(f"reachable: {exc.problem}", "check the URL, the host's firewall and that the CA is"
                        " running; behind a proxy set HTTPS_PROXY/HTTP_PROXY or --proxy")
        return
    report.ok(f"reachable: {client.host}:{client.port} accepts connections")
    if https:
        report.ok("TLS: handshake verified" + (" with --tls-trusted" if options.tls_trusted else "")
                  + ("; client certificate accepted" if options.tls_cert else ""))
    else:
        print("note  TLS: not used (http://)")
    credentials = options.secret is not None or options.cert is not None
    if credentials:
        config = options.config()
    else:  # a MAC sender the CA cannot know: it must answer with a CMP refusal
        config = ClientConfig(MacProtector(b"fleet doctor: no secret", reference=b"fleet-doctor-probe"))
    request = GeneralRequest((InfoTypeAndValue(oids.IT_CA_CERTS),))
    tx = ClientTransaction(config, request)
    seen: list[bytes] = []
    sent_at = time.time()

    async def round_trip() -> object:
        async with CmpHttpClient(options.server, max_connections=1, request_timeout=options.timeout,
                                 ssl_context=tls, proxy=options.proxy) as http:
            recorder = _Recording(http, seen.append)
            return await run_transaction(recorder, tx, timeout=options.timeout)

    try:
        done = trio.run(round_trip)
    except TransportError as exc:
        report.fail(f"CMP: {exc.problem}", "the URL's path must be the CA's CMP endpoint"
                    " (e.g. /.well-known/cmp); a proxy or load balancer may answer instead")
        return
    except CmpError as exc:
        if credentials:
            report.fail(f"genm caCerts: {exc}", _fix_for(exc))
        elif isinstance(exc, UnverifiedRefusal) or getattr(exc, "status", None) is not None:
            report.ok("CMP: the CA answers CMP (it refused the doctor's unknown MAC sender, as it should)")
            print("note  MAC/signature setup: not checked (give --ref/--secret or --cert/--key and --trusted)")
        else:
            report.fail(f"CMP: {exc}", "the URL may not be a CMP endpoint")
        _check_clock(report, seen, sent_at)
        return
    if not credentials:
        report.fail("CMP: the CA accepted a MAC sender it cannot know", "the CA does not check MAC protection: fix its configuration")
    else:
        how = "signature" if options.cert is not None else "MAC"
        items = [i for i in done.items if i.oid == oids.IT_CA_CERTS]  # type: ignore[attr-defined]
        count = len(genm.decode_ca_certs(items[0])) if items else 0
        report.ok(f"genm caCerts: {count} certificates; {how} protection of request and response verified")
    _check_clock(report, seen, sent_at)


def _check_clock(report: Report, responses: list[bytes], sent_at: float) -> None:
    """The CA's messageTime against this clock (the time the request went out)."""
    for data in responses:
        when = _message_time(data)
        if when is None:
            continue
        skew = when.timestamp() - sent_at
        text = f"clock: the CA's messageTime is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} this machine"
        if abs(skew) > SKEW_LIMIT:
            report.fail(text, "synchronise the clocks (NTP); CAs refuse requests with a skewed messageTime (badTime)")
        else:
            report.ok(text)
        return
    print("note  clock: the CA sent no messageTime")


def _message_time(data: bytes) -> datetime | None:
    """The messageTime of a response; None without one, or when it does not decode (that was
    reported by the round trip already)."""
    try:
        return messages.decode(data).header.message_time
    except (FleetError, ValueError):
        return None


def _fix_for(exc: CmpError) -> str:
    kind = getattr(exc, "kind", "")
    names = set(getattr(exc, "fail_names", ()) or ())
    if kind in ("bad_mac",) or "badMessageCheck" in names:
        return "check --secret and --ref: the CA and fleet do not share that secret"
    if kind in ("untrusted_signer", "signer_mismatch"):
        return "give --trusted with the root the CA's CMP signer chains to (fleet cmp genm --infotype caCerts, checked out of band)"
    if "notAuthorized" in names or "signerNotTrusted" in names:
        return "the CA does not accept this --cert: use one it issued or trusts"
    if kind == "iterations_refused":
        return "raise --max-iterations or lower the CA's iteration count"
    return "see the message above; fleet cmp genm --infotype caCerts shows the same exchange"


class _Recording:
    """A transport that hands every response body to ``record`` (for the clock check)."""

    def __init__(self, inner: CmpHttpClient, record: Callable[[bytes], None]) -> None:
        self.inner = inner
        self.record = record

    async def post(
        self, data: bytes, /, *, path: str | None = None, deadline: float | None = None
    ) -> CmpHttpResponse:
        response = await self.inner.post(data, path=path, deadline=deadline)
        self.record(response.body)
        return response
