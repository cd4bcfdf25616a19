"""``fleet ra serve``: a Registration Authority between devices and a CMP CA (RFC 9483 §5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.ca.config import CaConfigError, Latency, LoadKnobs
from fleet.cli.usage import examples
from fleet.ra.config import RaConfig, RaConfigError
from fleet.ra.serve import run
from fleet.secrets import read_secret

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="A CMP RA: verify device requests, forward them to a CA.",
                  epilog=examples("fleet ra serve --upstream http://127.0.0.1:8080/.well-known/cmp \\",
                                  "    --port 8081 --cert ra.pem --key ra.key --master-secret pass:demo"))

_SECRET_HELP = "as pass:TEXT, env:VAR or file:PATH (never printed)"

_SERVE_HELP = (
    "Verify device requests (MAC or signature) and forward them to --upstream, relaying the answers.\n\n"
    "Modes (RFC 9483 section 5.2.2): pass forwards every message unchanged; nested wraps them in a nested "
    "message signed with --cert/--key (--batch-size > 1 batches several devices' requests in one); "
    "replace re-signs requests with the RA's key, ir/cr POP as raVerified once the RA verified it "
    "(kur and rr go unchanged). A request that fails verification is answered by the RA with an "
    "error and its failInfo; the CA never sees it."
)


@app.command(help=_SERVE_HELP, short_help="Serve as an RA in front of a CMP CA until interrupted.", epilog=examples(
    "fleet ra serve --upstream http://127.0.0.1:8080/.well-known/cmp \\",
    "    --port 8081 --cert ra.pem --key ra.key --master-secret pass:demo",
    "fleet ra serve --upstream http://ca:8080/.well-known/cmp --mode nested \\",
    "    --batch-size 16 --batch-wait 0.02 --cert ra.pem --key ra.key \\",
    "    --upstream-trusted ca-root.pem --secret pass:demo",
))
def serve(
    ctx: typer.Context,
    upstream: Annotated[str, typer.Option(help="URL of the CA (or next RA) to forward to.")],
    cert: Annotated[Path | None, typer.Option(help="The RA's CMP certificate (PEM: the certificate, then its chain).")] = None,
    key: Annotated[Path | None, typer.Option(help="Private key of --cert.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed at start).")] = 8081,
    mode: Annotated[str, typer.Option(help="pass, nested or replace (see above).")] = "pass",
    batch_size: Annotated[int, typer.Option(help="Requests per nested message (--mode nested).")] = 1,
    batch_wait: Annotated[float, typer.Option(help="Seconds a batch waits for more requests after its first.")] = 0.05,
    upstream_trusted: Annotated[list[Path] | None, typer.Option(metavar="PEM",
        help="Trust anchors of the upstream CA's CMP signer: its answers are verified (needed for nested "
             "and replace); repeatable.")] = None,
    upstream_timeout: Annotated[float, typer.Option(help="Seconds to wait for the upstream's answer.")] = 30.0,
    secret: Annotated[str | None, typer.Option(help=f"Shared MAC secret of the devices {_SECRET_HELP}.")] = None,
    ref: Annotated[str | None, typer.Option(help="Reference (senderKID) the --secret belongs to.")] = None,
    master_secret: Annotated[str | None, typer.Option(
        help=f"Master secret for per-device MAC secrets hex(HMAC-SHA256(master, reference)), {_SECRET_HELP}.")] = None,
    trusted: Annotated[list[Path] | None, typer.Option(metavar="PEM",
        help="Trust anchors for signed device requests; repeatable.")] = None,
    vendor_trust: Annotated[Path | None, typer.Option(help="Vendor (IDevID) anchors: ir signed under them passes.")] = None,
    untrusted: Annotated[list[Path] | None, typer.Option(metavar="PEM", help="Intermediate certificates for paths; repeatable.")] = None,
    max_time_skew: Annotated[float, typer.Option(help="Allowed messageTime skew in seconds (0: unchecked).")] = 300.0,
    max_iterations: Annotated[int, typer.Option(help="Cap on PBM/PBMAC1 iteration counts.")] = 10_000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (HTTP 413 beyond).")] = 1_000_000,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this certificate chain (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(metavar="PEM", help="Mutual TLS: require a device client certificate issued under these CA certificates.")] = None,
    upstream_tls_trusted: Annotated[Path | None, typer.Option(metavar="PEM", help="https upstream: CA certificates to verify its TLS server with (default: the system's store, $SSL_CERT_FILE honoured).")] = None,
    upstream_tls_cert: Annotated[Path | None, typer.Option(metavar="PEM", help="https upstream: the RA's TLS client certificate (PEM, chain after it).")] = None,
    upstream_tls_key: Annotated[Path | None, typer.Option(metavar="PEM", help="Key of --upstream-tls-cert.")] = None,
    upstream_tls_key_pass: Annotated[str | None, typer.Option(metavar="SECRET", help=f"Passphrase of --upstream-tls-key, {_SECRET_HELP}.")] = None,
    latency: Annotated[str, typer.Option(help="Added latency: none, fixed:S, uniform:A:B, exp:MEAN, lognormal:MEDIAN:SIGMA.")] = "none",
    error_fraction: Annotated[float, typer.Option(help="Fraction of verified requests answered with a CMP error by the RA.")] = 0.0,
    http_503_fraction: Annotated[float, typer.Option(help="Fraction of CMP requests answered HTTP 503.")] = 0.0,
    drop_fraction: Annotated[float, typer.Option(help="Fraction of CMP requests whose connection is dropped.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the knobs' random draws.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics (fleet_ra_*) on this port.")] = None,
    metrics_host: Annotated[str | None, typer.Option(metavar="ADDR", help="Address /metrics binds to (default 127.0.0.1).")] = None,
) -> None:
    """Serve as an RA in front of a CMP CA until interrupted."""
    try:
        knobs = LoadKnobs(latency=Latency.parse(latency), error_fraction=error_fraction,
                          http_503_fraction=http_503_fraction, drop_fraction=drop_fraction, seed=seed)
    except CaConfigError as exc:
        raise typer.BadParameter(exc.problem, ctx=ctx, param_hint=f"'--{exc.key.replace('_', '-')}'") from None
    try:
        config = RaConfig(
            upstream=upstream, host=host, port=port, mode=mode, batch_size=batch_size, batch_wait=batch_wait,
            upstream_timeout=upstream_timeout, cert=cert, key=key, upstream_trusted=tuple(upstream_trusted or ()),
            secret=read_secret(secret) if secret is not None else None, ref=ref,
            master_secret=read_secret(master_secret) if master_secret is not None else None,
            trusted=tuple(trusted or ()), vendor_trust=vendor_trust, untrusted=tuple(untrusted or ()),
            max_time_skew=max_time_skew, max_iterations=max_iterations, max_body_bytes=max_body_bytes,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, upstream_tls_trusted=upstream_tls_trusted,
            upstream_tls_cert=upstream_tls_cert, upstream_tls_key=upstream_tls_key,
            upstream_tls_key_pass=read_secret(upstream_tls_key_pass) if upstream_tls_key_pass is not None else None,
            knobs=knobs, metrics_port=metrics_port, metrics_host=metrics_host,
        )
    except RaConfigError as exc:
        raise typer.BadParameter(exc.problem, ctx=ctx, param_hint=f"'--{exc.key.replace('_', '-')}'") from None
    run(config)


__all__ = ["app"]
