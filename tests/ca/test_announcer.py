"""The CA pushing announcements: a rann on rr and a cann on issue go to the device's URL from
the template, signed and believed by a listener that trusts the CA; failed posts are retried
with backoff, then given up; a full queue drops and counts rather than slowing the CA.

In process with a recording transport; then as real processes: ``fleet ca serve
--announce-url`` pushing to ``fleet cmp listen`` when ``fleet cmp rr`` revokes the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fleet_processes import start_fleet

from fleet.ca.announcer import Announcer, load_routes
from fleet.ca.authority import Authority
from fleet.ca.config import CaConfig, CaConfigError
from fleet.ca.metrics import CaMetrics
from fleet.cmp.announce import CertAnnouncement, RevAnnouncement, read_announcement
from fleet.cmp.backend import IssueRequest
from fleet.cmp.messages import BodyType
from fleet.cmp.trust import TrustStore
from fleet.errors import FleetError
from fleet.load.child import free_port, stop_child
from fleet.transport import TransportError


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


def _issue(authority: Authority, ref: str) -> int:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue(IssueRequest(
        kind=BodyType.IR, public_key=key.public_key(),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ref)]), extensions=(), not_after=None,
        device_ref=ref, transaction_id=os.urandom(16), confirmed=True, old_cert=None, now=time.time(),
    ))
    return issued.serial


class Recorder:
    """A transport factory: fails the first ``failures`` posts to each URL, records the rest."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: dict[str, int] = {}
        self.received: list[tuple[str, bytes]] = []

    def __call__(self, url: str, timeout: float):  # type: ignore[no-untyped-def]
        recorder = self

        class _T:
            async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None) -> object:
                recorder.attempts[url] = recorder.attempts.get(url, 0) + 1
                if recorder.attempts[url] <= recorder.failures:
                    raise TransportError(url, "connection refused", kind="connect")
                recorder.received.append((url, data))
                return object()

        @asynccontextmanager
        async def opened():  # type: ignore[no-untyped-def]
            yield _T()

        return opened()


async def _deliver(announcer: Announcer, until: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(announcer.run)
        while announcer.stats.delivered + announcer.stats.failed < until:
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_rann_and_cann_reach_the_device_url_and_are_believed(authority: Authority, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    announcer = Announcer(authority, "http://devices.example/{reference}/cmp?serial={serial}", issued=True,
                          transport=recorder)
    serial = _issue(authority, "dev 1")
    announcer.issued(serial)
    authority.revoke(serial, x509.ReasonFlags.key_compromise, datetime.now(UTC))
    announcer.revoked(serial)
    await _deliver(announcer, 2)
    assert [url for url, _ in recorder.received] == [f"http://devices.example/dev%201/cmp?serial={serial:x}"] * 2
    trust = TrustStore([x509.load_der_x509_certificate(authority.root)])
    (_, cann), (_, rann) = (read_announcement(data, trust=trust, now=time.time()) for _, data in recorder.received)
    assert isinstance(cann, CertAnnouncement) and x509.load_der_x509_certificate(cann.certificate).serial_number == serial
    assert isinstance(rann, RevAnnouncement) and rann.serial == serial and rann.status == 5
    assert announcer.stats.delivered == 2 and len(announcer.latencies) == 2


async def test_retries_with_backoff_then_gives_up(authority: Authority, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    recorder = Recorder(failures=2)
    metrics = CaMetrics(process=False)
    announcer = Announcer(authority, "http://a.example/{reference}", retries=3, backoff=1.0, transport=recorder,
                          observer=metrics.announcement)
    announcer.revoked(_issue(authority, "a"))
    started = trio.current_time()
    await _deliver(announcer, 1)
    assert announcer.stats.delivered == 1 and announcer.stats.retries == 2
    assert trio.current_time() - started >= 3.0  # waited 1 s, then 2 s
    text = metrics.exposition().decode()
    for result, count in (("queued", 1), ("retried", 2), ("delivered", 1)):
        assert f'fleet_ca_announcements_total{{result="{result}"}} {count}.0' in text
    assert "fleet_ca_announcement_delivery_seconds_count 1.0" in text
    hopeless = Announcer(authority, "http://b.example/{reference}", retries=1, backoff=0.1, transport=Recorder(99))
    hopeless.revoked(_issue(authority, "b"))
    await _deliver(hopeless, 1)
    assert (hopeless.stats.delivered, hopeless.stats.failed) == (0, 1)


async def test_any_2xx_delivers_and_a_4xx_with_a_cmp_body_does_not(authority: Authority) -> None:
    """A real HTTP listener answering 204 (no body), 202, 200; then 400 with a CMP body: only
    the 2xx ones count as delivered, the 400 is retried and given up."""
    from functools import partial

    from fleet.http.server import HttpRequest, HttpResponse, serve_http

    answers = {"/a": HttpResponse(204, b"", "text/plain"), "/b": HttpResponse(202, b"", "text/plain"),
               "/c": HttpResponse(200, b"", "application/pkixcmp"),
               "/d": HttpResponse(400, b"0\x00", "application/pkixcmp")}

    async def handle(request: HttpRequest) -> HttpResponse:
        return answers[request.path]

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, handle, "127.0.0.1", 0))
        announcer = Announcer(authority, f"http://127.0.0.1:{port}/{{reference}}", retries=1, backoff=0.01)
        for ref in "abcd":
            announcer.revoked(_issue(authority, ref))
        with trio.fail_after(20):
            await _deliver(announcer, 4)
        nursery.cancel_scope.cancel()
    assert (announcer.stats.delivered, announcer.stats.failed, announcer.stats.retries) == (3, 1, 1)


def test_full_queue_drops_and_counts(authority: Authority) -> None:
    announcer = Announcer(authority, "http://c.example/{reference}", max_queue=2, transport=Recorder())
    for i in range(5):
        announcer.revoked(_issue(authority, f"c{i}"))
    assert (announcer.stats.queued, announcer.stats.dropped) == (2, 3)


def test_registered_routes_come_before_the_template(authority: Authority, tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    routes.write_text("# fleet run's workers\ndev-1 http://127.0.0.1:9001/d/dev-1\n\n")
    recorder = Recorder()
    announcer = Announcer(authority, "http://t.example/{reference}", routes=load_routes(routes), transport=recorder)
    announcer.revoked(_issue(authority, "dev-1"))
    announcer.revoked(_issue(authority, "dev-2"))
    trio.run(_deliver, announcer, 2)
    assert sorted(url for url, _ in recorder.received) == ["http://127.0.0.1:9001/d/dev-1", "http://t.example/dev-2"]
    routes.write_text("dev-1 http://ok.example/\ndev-2 ftp://no.example/\n")
    with pytest.raises(FleetError, match="line 2: expected 'reference http"):
        load_routes(routes)


def test_template_is_checked() -> None:
    for template, words in (("ftp://x/{reference}", "http:// or https://"), ("http://x/{cn}", "unknown placeholder {cn}")):
        with pytest.raises(CaConfigError) as err:
            CaConfig(announce_url=template)
        assert err.value.key == "announce_url" and words in str(err.value)
    with pytest.raises(CaConfigError):
        CaConfig(announce_issued=True)


# ---------------------------------------------------------------------------------------------
# Real processes


def test_ca_pushes_rann_to_fleet_cmp_listen_on_rr(tmp_path: Path) -> None:
    listen_port = free_port()
    ca, port = start_fleet(["ca", "serve", "--dir", "ca", "--port", "0", "--secret", "pass:demo",
                       "--announce-url", f"http://127.0.0.1:{listen_port}/{{reference}}"], tmp_path, "listening on")
    listener = None
    try:
        server = f"http://127.0.0.1:{port}/.well-known/cmp"
        fleet = [sys.executable, "-m", "fleet.cli.main", "cmp"]
        enroll = subprocess.run([*fleet, "ir", "--server", server, "--ref", "dev-1", "--secret", "pass:demo",
                                 "--subject", "/CN=pushed", "--newkey", "d.key", "--certout", "d.pem",
                                 "--chainout", "chain.pem"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert enroll.returncode == 0, enroll.stderr
        listener, _ = start_fleet(["cmp", "listen", "--port", str(listen_port), "--trusted", "ca/root-ca.pem",
                              "--cert", "d.pem", "--count", "1"], tmp_path, "listening for announcements")
        revoke = subprocess.run([*fleet, "rr", "--server", server, "--cert", "d.pem", "--key", "d.key", "--trusted",
                                 "ca/root-ca.pem", "--untrusted", "chain.pem", "--oldcert", "d.pem"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
        assert revoke.returncode == 0, revoke.stderr
        out, _ = listener.communicate(timeout=30)
        assert listener.returncode == 0, out
        line = json.loads(out.strip().splitlines()[-1])
        assert line["accepted"] and line["body"] == "rann" and line["action"] == "re-enroll", line
    finally:
        for proc in (listener, ca):
            stop_child(proc)
