"""``fleet ca``: run the embedded CMP CA (``serve``), roll its root key over (``rollover``) and read
its records (``stats``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from fleet.ca.authority import STORE_FILE
from fleet.ca.config import CaConfig, CaConfigError, Latency, LoadKnobs
from fleet.ca.rollover import STAGED, prepare
from fleet.ca.serve import run
from fleet.ca.store import CertStore
from fleet.cli.usage import examples
from fleet.errors import FleetError
from fleet.secrets import read_secret

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The embedded CMP CA/RA (loopback runs, load target).",
                  epilog=examples("fleet ca serve --dir ca-state --port 8080 --master-secret pass:demo",
                                  "fleet ca rollover --dir ca-state --switch-at +3600",
                                  "fleet ca stats --dir ca-state"))

_SECRET_HELP = "as pass:TEXT, env:VAR or file:PATH (never printed)"


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
    "fleet ca serve --dir ca-state --master-secret pass:demo \\",
    "    --tls-cert tls.pem --tls-key tls.key --tls-client-ca stations-ca.pem",
))
def serve(
    ctx: typer.Context,
    state: Annotated[Path, typer.Option("--dir", help="State directory: CA keys, certificates, records.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed at start).")] = 8080,
    coap_port: Annotated[int | None, typer.Option(help="Also serve CMP over CoAP (RFC 9482) on this UDP port "
                                                       "(0: any free port).")] = None,
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
    ra_trusted: Annotated[list[Path] | None, typer.Option(metavar="PEM",
        help="PEM file of RA certificates or their anchors: nested (batched) messages and raVerified POP "
             "signed under them are accepted (RFC 9483 section 5.2); repeatable.")] = None,
    announce_url: Annotated[str | None, typer.Option(metavar="URL",
        help="Push a signed rann to this URL when a certificate is revoked; {reference} and {serial} "
             "are replaced by the device's reference and the serial (hex).")] = None,
    announce_issued: Annotated[bool, typer.Option("--announce-issued",
        help="Also push a cann when a certificate is issued (needs --announce-url).")] = False,
    announce_crl: Annotated[bool, typer.Option("--announce-crl",
        help="Also push a crlann to every device when the CA issues a new CRL (needs --announce-url).")] = False,
    announce_routes: Annotated[Path | None, typer.Option(metavar="FILE",
        help="Registered announcement URLs, one 'reference URL' line per device; others get "
             "--announce-url's (needs it).")] = None,
    mode: Annotated[str, typer.Option(help="lcmpp (root in caPubs for MAC ir) or 3gpp (root in extraCerts).")] = "lcmpp",
    key_type: Annotated[str, typer.Option(help="Key type of a new hierarchy (ec:P-256, ec:P-384, rsa:2048, ed25519).")] = "ec:P-256",
    validity_days: Annotated[int, typer.Option(help="Validity of issued certificates.")] = 365,
    issuing_cert: Annotated[Path | None, typer.Option(help="Bring your own issuing CA certificate (with --issuing-key, --signer-cert, --signer-key).")] = None,
    issuing_key: Annotated[Path | None, typer.Option(help="Issuing CA key file.")] = None,
    signer_cert: Annotated[Path | None, typer.Option(help="CMP protection (RA) certificate file.")] = None,
    signer_key: Annotated[Path | None, typer.Option(help="CMP protection (RA) key file.")] = None,
    chain: Annotated[Path | None, typer.Option(help="Issuing CA's issuers, nearest first, root last (PEM).")] = None,
    public_url: Annotated[str | None, typer.Option(help="Base URL put into certificates for CRL and OCSP.")] = None,
    confirm_wait: Annotated[float, typer.Option(help="Seconds a certConf may take before the certificate is rejected.")] = 60.0,
    implicit_confirm: Annotated[bool, typer.Option(help="Grant implicit confirmation when asked.")] = True,
    max_time_skew: Annotated[float, typer.Option(help="Allowed messageTime skew in seconds (0: unchecked).")] = 300.0,
    max_iterations: Annotated[int | None, typer.Option(help=(
        "Cap on PBM/PBMAC1 iteration counts (default: 100,000 for PBM, 1,000,000 for PBMAC1)."))] = None,
    require_message_time: Annotated[bool, typer.Option(help=(
        "Refuse requests without messageTime (badTime, RFC 9483 section 3.1); --no-require-message-time "
        "serves devices without a clock."))] = True,
    max_transactions: Annotated[int, typer.Option(help="Concurrent transactions beyond which new ones get systemUnavail (0: no cap).")] = 0,
    issue_rate: Annotated[float, typer.Option(metavar="RATE", help="Load-target knob: certificate requests (ir, cr, kur, p10cr) started per second beyond which they get systemUnavail, a token bucket holding 0.1 s of them (0: no cap).")] = 0.0,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (HTTP 413 beyond).")] = 1_000_000,
    allow_replaced_signers: Annotated[bool, typer.Option(
        "--allow-replaced-signers",
        help="Let a certificate replaced by a confirmed kur go on signing requests (by default it may "
             "only revoke itself; it stays valid for CRL and OCSP either way).")] = False,
    allow_key_reuse: Annotated[bool, typer.Option(
        "--allow-key-reuse",
        help="Certify a public key that already has a live certificate here (refused by default "
             "with badCertTemplate).")] = False,
    kga: Annotated[bool, typer.Option(
        "--kga", help="Act as key generation authority on every path: central key generation (RFC 9483 "
                      "4.1.6) for ir/cr/kur without a public key.")] = False,
    kga_profiles: Annotated[str, typer.Option(metavar="NAMES",
        help="Central key generation only under /.well-known/cmp/p/<name> for these comma-separated names.")] = "",
    kga_key_type: Annotated[str, typer.Option(help="Key type generated when a request names none (ec:P-256, rsa:2048, ed25519 ...).")] = "ec:P-256",
    kga_password_delivery: Annotated[bool, typer.Option(
        help="Deliver keys to MAC-protected requests, encrypted with the shared secret (PWRI); "
             "--no-kga-password-delivery refuses them (notAuthorized).")] = True,
    kga_pwri_iterations: Annotated[int, typer.Option(help="PBKDF2 iterations of password-based key delivery.")] = 2048,
    kga_rsa_pool: Annotated[int, typer.Option(
        help="Load-target knob: hand out RSA keys from this many of fleet's pre-generated pool keys "
             "(fleet keys generate), reused in turn (0: a new RSA key per request).")] = 0,
    kga_kek_cache: Annotated[int, typer.Option(
        help="Devices whose password-based delivery salt and key (PBKDF2) are kept, so a repeat device "
             "costs no PBKDF2 (0: derive per envelope).")] = 65_536,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this certificate chain (PEM, leaf first).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(metavar="PEM", help="Mutual TLS: require a client certificate issued under these CA certificates (refused with a TLS alert otherwise).")] = None,
    latency: Annotated[str, typer.Option(help="Added latency: none, fixed:S, uniform:A:B, exp:MEAN, lognormal:MEDIAN:SIGMA.")] = "none",
    waiting_fraction: Annotated[float, typer.Option(help="Fraction of new requests answered 'waiting' (polling).")] = 0.0,
    check_after: Annotated[float, typer.Option(help="Seconds until a 'waiting' response is ready.")] = 1.0,
    error_fraction: Annotated[float, typer.Option(help="Fraction of new requests answered with a CMP error.")] = 0.0,
    http_503_fraction: Annotated[float, typer.Option(help="Fraction of CMP requests answered HTTP 503.")] = 0.0,
    drop_fraction: Annotated[float, typer.Option(help="Fraction of CMP requests whose connection is dropped.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the knobs' random draws.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics (fleet_ca_*) on this port.")] = None,
    metrics_host: Annotated[str | None, typer.Option(metavar="ADDR", help="Address /metrics binds to (default: $FLEET_METRICS_HOST, else 127.0.0.1; 0.0.0.0 exposes it to the network).")] = None,
) -> None:
    """Serve CMP (/.well-known/cmp, /pkix/), the CRL and OCSP until interrupted."""
    secret_value = read_secret(secret) if secret is not None else None
    master = read_secret(master_secret) if master_secret is not None else None
    try:
        config = CaConfig(
            state=state, host=host, port=port, coap_port=coap_port, secret=secret_value, ref=ref, master_secret=master,
            vendor_trust=vendor_trust, trusted=tuple(trusted or ()), untrusted=tuple(untrusted or ()),
            ra_trusted=tuple(ra_trusted or ()), announce_url=announce_url, announce_issued=announce_issued,
            announce_crl=announce_crl,
            announce_routes=announce_routes,
            key_type=key_type, validity_days=validity_days, issuing_cert=issuing_cert, issuing_key=issuing_key,
            signer_cert=signer_cert, signer_key=signer_key, chain=chain, public_url=public_url, mode=mode,
            confirm_wait=confirm_wait, implicit_confirm=implicit_confirm, max_time_skew=max_time_skew,
            max_iterations=max_iterations, max_transactions=max_transactions, issue_rate=issue_rate, max_body_bytes=max_body_bytes,
            allow_replaced_signers=allow_replaced_signers, require_message_time=require_message_time,
            allow_key_reuse=allow_key_reuse, tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            kga=kga, kga_profiles=kga_profiles, kga_key_type=kga_key_type,
            kga_password_delivery=kga_password_delivery, kga_pwri_iterations=kga_pwri_iterations,
            kga_rsa_pool=kga_rsa_pool, kga_kek_cache=kga_kek_cache,
            knobs=LoadKnobs(
                latency=Latency.parse(latency), waiting_fraction=waiting_fraction, check_after=check_after,
                error_fraction=error_fraction, http_503_fraction=http_503_fraction, drop_fraction=drop_fraction,
                seed=seed,
            ),
            metrics_port=metrics_port, metrics_host=metrics_host,
        )
    except CaConfigError as exc:
        raise typer.BadParameter(exc.worded(_flag), ctx=ctx, param_hint=f"'{_flag(exc.key)}'") from None
    run(config)


def _flag(key: str) -> str:
    """The option of a ``CaConfig`` setting."""
    return "--dir" if key == "state" else "--" + key.replace("_", "-")


def _switch_time(text: str | None, now: float) -> float | None:
    """--switch-at: an ISO 8601 time with its offset, or +SECONDS from now."""
    if text is None:
        return None
    try:
        if text.startswith("+"):
            return now + float(text[1:])
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither an ISO 8601 time nor +SECONDS", param_hint="'--switch-at'") from None
    if when.tzinfo is None:
        raise typer.BadParameter(f"{text!r} needs a UTC offset (e.g. 2030-01-01T00:00:00+00:00)",
                                 param_hint="'--switch-at'")
    return when.timestamp()


@app.command(short_help="Roll the root CA key over, crash-safe.", epilog=examples("fleet ca rollover --dir ca-state",
                             "fleet ca rollover --dir ca-state --switch-at +3600",
                             "fleet ca rollover --dir ca-state --switch-at 2030-01-01T00:00:00+00:00"))
def rollover(
    state: Annotated[Path, typer.Option("--dir", help="State directory of a CA made by fleet ca serve.")],
    switch_at: Annotated[str | None, typer.Option(metavar="TIME",
        help="When the new root key becomes active: ISO 8601 with offset, or +SECONDS (default: now). "
             "Until then the CA offers the new root (genm rootCaCert, ckuann) and issues as before.")] = None,
) -> None:
    """Roll the root CA key over: new root with newWithOld/oldWithNew links (RFC 9810 4.4).

    Crash-safe, and a running fleet ca serve on the same --dir adopts it within a second."""
    now = time.time()
    update = prepare(state, switch_at=_switch_time(switch_at, now), now=now)
    folder = state / STAGED / update.ident
    when = datetime.fromtimestamp(update.switch_at, UTC).isoformat(timespec="seconds")
    print(f"new root key {update.ident}: {update.new_with_new.subject.rfc4514_string()}")
    print(f"  newWithNew {folder / 'newwithnew.pem'}")
    print(f"  newWithOld {folder / 'newwithold.pem'}")
    print(f"  oldWithNew {folder / 'oldwithnew.pem'}")
    print(f"  {'switched' if update.switched else 'switches'} at {when}")


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
