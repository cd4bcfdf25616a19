"""Compose an RA from an ``RaConfig`` and serve it until SIGINT or SIGTERM (``fleet ra serve``).

Every file is read, and every credential checked, before anything listens: a bad one is one
``FleetError`` line.
"""

from __future__ import annotations

import signal
import ssl
import sys
from urllib.parse import urlsplit

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleet.ca.serve import _check_port, tls_context
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.cmp.trust import TrustStore
from fleet.errors import FleetError
from fleet.files import load_certificates, load_private_key
from fleet.http.client import CmpHttpClient
from fleet.prometheus import metrics_host
from fleet.ra.config import RaConfig
from fleet.ra.metrics import RaMetrics
from fleet.ra.relay import Relay, RelayPolicy
from fleet.ra.service import RaService
from fleet.transport import CmpTransport

__all__ = ["build_relay", "run"]


def _certs(paths: tuple, what: str) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for path in paths:
        certs = load_certificates(path)
        if not certs:
            raise FleetError(f"{what} file {path} holds no certificate")
        out.extend(certs)
    return out


def build_relay(config: RaConfig) -> Relay:
    """The relay with the RA's credential, the device-side secrets and anchors, and the
    upstream's anchors, all read now."""
    assert config.cert is not None and config.key is not None
    chain = _certs((config.cert,), "--cert")
    key = load_private_key(config.key)
    cert = chain[0]
    if cert.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise FleetError(f"--key {config.key} is not the key of --cert {config.cert}")
    secrets = None
    if config.secret is not None or config.master_secret is not None:
        table = {config.ref.encode(): config.secret} if config.ref is not None and config.secret else {}
        default = config.secret if config.ref is None else None
        secrets = SharedSecrets(table, default=default, master=config.master_secret)
    vendor = _certs((config.vendor_trust,), "--vendor-trust") if config.vendor_trust else []
    upstream = _certs(config.upstream_trusted, "--upstream-trusted")
    return Relay(
        SignatureProtector(key, cert, chain[1:]),
        policy=RelayPolicy(mode=config.ra_mode, max_time_skew=config.max_time_skew or None,
                           max_iterations=config.max_iterations),
        secrets=secrets,
        trust=TrustStore(_certs(config.trusted, "--trusted")),
        vendor_trust=TrustStore(vendor) if vendor else None,
        untrusted=tuple(_certs(config.untrusted, "--untrusted")),
        upstream_trust=TrustStore(upstream) if upstream else None,
    )


def run(config: RaConfig) -> None:
    """Serve until SIGINT or SIGTERM, saying where and how on stdout."""
    relay = build_relay(config)
    _check_port(config.host, config.port)  # a busy port is one line, before anything starts
    tls = tls_context(config)  # type: ignore[arg-type]  # reads tls_cert, tls_key and tls_client_ca only
    upstream_tls = config.upstream_tls()
    upstream_context = upstream_tls.context() if upstream_tls is not None else None
    metrics = None
    if config.metrics_port is not None:
        metrics = RaMetrics.serve(config.metrics_port, host=config.metrics_host)
    trio.run(_main, config, relay, tls, metrics, upstream_context)


async def _main(config: RaConfig, relay: Relay, tls: object, metrics: RaMetrics | None,
                upstream_tls: ssl.SSLContext | None = None) -> None:
    upstream = CmpHttpClient(config.upstream, request_timeout=config.upstream_timeout, ssl_context=upstream_tls)
    async with upstream:
        transport: CmpTransport = upstream
        service = RaService(
            relay, transport, upstream_path=urlsplit(config.upstream).path or "/",
            batch_size=config.batch_size, batch_wait=config.batch_wait,
            upstream_timeout=config.upstream_timeout, knobs=config.knobs, metrics=metrics,
        )
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    lambda task_status: service.serve(
                        config.host, config.port, max_body_bytes=config.max_body_bytes,
                        ssl_context=tls, task_status=task_status,  # type: ignore[arg-type]
                    )
                )
                base = service.base_url
                print(f"fleet RA listening on {base} (port {bound})")
                print(f"  CMP:  {base}/.well-known/cmp  (also {base}/pkix/)")
                batching = f", batches of up to {config.batch_size} within {config.batch_wait:g} s" \
                    if config.batch_size > 1 else ""
                print(f"  upstream: {upstream.url}  mode: {config.mode}{batching}")
                print(f"  RA certificate: {relay.signer.certificate.subject.rfc4514_string()}")
                if metrics is not None:
                    print(f"  metrics: http://{config.metrics_host or metrics_host()}:{config.metrics_port}/metrics")
                sys.stdout.flush()
                async for _ in signals:
                    print("fleet RA stopping", flush=True)
                    nursery.cancel_scope.cancel()
                    break


_SPKI = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
