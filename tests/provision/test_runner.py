"""The per-device state machine against fleet's real CA in this process, with faults injected at
chosen protocol steps (a dropped certConf, a lost response), to reach each resume case exactly."""

from __future__ import annotations

import itertools
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from provision_helpers import LoopbackCa, mac_manifest, secret_for

from fleet.ca.store import CertRecordStatus
from fleet.cmp import messages
from fleet.cmp.messages import BodyType
from fleet.files import load_certificate, load_private_key
from fleet.http.server import HttpRequest, HttpResponse
from fleet.provision import outputs
from fleet.provision.journal import DeviceRecord, DeviceState, Journal, OrphanFate
from fleet.provision.manifest import load_manifest, parse_manifest
from fleet.provision.runner import Provisioner, ProvisionOptions, RunStats, is_transient
from fleet.provision.summary import summarize
from fleet.transport import CmpResponse, InProcessTransport, TransportError


@pytest.fixture
async def ca(tmp_path: Path, nursery: trio.Nursery) -> LoopbackCa:
    loopback = LoopbackCa(tmp_path / "ca")
    await loopback.serve(nursery)
    return loopback


def options(ca: LoopbackCa, out: Path, **kw: object) -> ProvisionOptions:
    base: dict[str, object] = {
        "server": ca.url, "out": out, "concurrency": 4, "timeout": 10.0, "max_attempts": 3,
        "backoff_base": 0.01, "backoff_max": 0.05, "trusted": (ca.root(),), "seed": 1,
    }
    base.update(kw)
    return ProvisionOptions(**base)  # type: ignore[arg-type]


async def provision(ca: LoopbackCa, manifest: Path, out: Path, **kw: object) -> tuple[RunStats, dict[str, object]]:
    devices = load_manifest(manifest)
    with Journal.open(out / "journal.sqlite", server=ca.url) as journal:
        stats = await Provisioner(devices, journal, options(ca, out, **kw)).run()
        return stats, summarize(devices, journal, stats)


def journal_view(out: Path) -> Journal:
    return Journal.open(out / "journal.sqlite")


def spki(key: object) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def drop_first(ca: LoopbackCa, label: str, *, after_ca: bool, times: int = 1) -> list[int]:
    """Drop the connection of the first ``times`` ``label`` requests, before or after the CA saw them."""
    dropped = [0]

    async def hook(request: HttpRequest, msg: messages.PKIMessage) -> HttpResponse | None:
        if msg.label == label and dropped[0] < times:
            dropped[0] += 1
            if after_ca:
                ca.server.handle(request.body, time.time())
            return HttpResponse(0, drop_connection=True)
        return None

    ca.hook = hook
    return dropped


async def test_provisions_devices_with_files_and_journal_steps(ca: LoopbackCa, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 6)
    out = tmp_path / "out"
    stats, summary = await provision(ca, manifest, out)
    assert stats.provisioned == 6 and summary["complete"] is True
    for device_id in ids:
        folder = out / device_id
        assert stat.S_IMODE(os.stat(folder / "key.pem").st_mode) == 0o600
        cert = load_certificate(folder / "cert.pem")
        assert spki(load_private_key(folder / "key.pem")) == cert.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert cert.subject.rfc4514_string() == f"O=Fleet,CN={device_id}"
        assert load_certificate(folder / "ca.pem") == ca.root()
    with journal_view(out) as journal:
        assert [e[1] for e in journal.events(ids[0])] == ["key", "sent", "received", "confirmed"]
    assert ca.counts().get("issued") == 6
    # A rerun sends nothing: every device is confirmed.
    before = len(ca.seen)
    stats, summary = await provision(ca, manifest, out)
    assert (stats.skipped, stats.provisioned, len(ca.seen)) == (6, 0, before)


async def test_request_in_flight_at_crash_is_a_possible_orphan_left_to_the_ca(ca: LoopbackCa, tmp_path: Path) -> None:
    """A journal left at 'sent' (the process died with the ir in flight, and the CA issued)."""
    manifest = tmp_path / "m.csv"
    (device_id,) = mac_manifest(manifest, 1)
    out = tmp_path / "out"
    drop_first(ca, "ir", after_ca=True)  # the CA issues; the answer never arrives
    stats, summary = await provision(ca, manifest, out, max_attempts=1)
    with journal_view(out) as journal:
        rec = journal.device(device_id)
        assert rec.state is DeviceState.KEY and rec.error_kind == "connection_lost"
        (orphan,) = journal.orphans_of(device_id)
        assert orphan.fate is OrphanFate.LEFT_TO_CA and not orphan.received
        # Make the journal look exactly like a kill -9 between send and receive.
        journal.commit([(DeviceRecord(device_id, DeviceState.SENT, rec.fingerprint, rec.key_id,
                                      transaction_id=b"\x01" * 16, attempts=1), "sent")])
    assert summary["failed"] == 1
    ca.hook = None
    stats, summary = await provision(ca, manifest, out)
    assert summary["complete"] is True and stats.possible_orphans == 1
    ca.tick(time.time() + 3600)  # confirmWaitTime passes: the unconfirmed orphan is rejected
    assert ca.counts() == {"issued": 1, "rejected": 1}
    row = summary["results"][0]  # type: ignore[index]
    assert [o["fate"] for o in row["orphans"]] == ["left_to_ca_expiry", "left_to_ca_expiry"]


async def test_received_certificate_is_confirmed_in_its_original_transaction(ca: LoopbackCa, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    (device_id,) = mac_manifest(manifest, 1)
    out = tmp_path / "out"
    drop_first(ca, "certConf", after_ca=False, times=2)  # 2: the client re-sends once on a kept-alive connection
    await provision(ca, manifest, out, max_attempts=1)
    with journal_view(out) as journal:
        rec = journal.device(device_id)
        assert rec.state is DeviceState.RECEIVED and rec.certificate is not None
    assert (out / device_id / "cert.pem").exists()  # stored before certConf
    ca.hook = None
    _, summary = await provision(ca, manifest, out)
    assert summary["complete"] is True
    with journal_view(out) as journal:
        assert journal.events(device_id)[-1][1] == "confirmed_resumed"
        assert journal.device(device_id).certificate == rec.certificate  # the same certificate
        assert journal.orphans_of(device_id) == []
    assert ca.counts() == {"issued": 1}


@pytest.mark.parametrize("ca_event", ["expired", "restarted"])
async def test_received_certificate_the_ca_will_not_confirm_is_revoked_and_replaced(
    ca: LoopbackCa, tmp_path: Path, ca_event: str
) -> None:
    """expired: confirmWaitTime passed, the CA rejected it (rr: already revoked). restarted: the
    CA forgot the transaction but still has the certificate pending (rr revokes it)."""
    manifest = tmp_path / "m.csv"
    (device_id,) = mac_manifest(manifest, 1)
    out = tmp_path / "out"
    drop_first(ca, "certConf", after_ca=False, times=2)  # 2: the client re-sends once on a kept-alive connection
    await provision(ca, manifest, out, max_attempts=1)
    ca.hook = None
    with journal_view(out) as journal:
        orphan_serial = journal.device(device_id).serial
    if ca_event == "expired":
        ca.tick(time.time() + 3600)
    else:
        ca.restart_server()
    _, summary = await provision(ca, manifest, out)
    assert summary["complete"] is True
    with journal_view(out) as journal:
        (orphan,) = journal.orphans_of(device_id)
        assert orphan.received and orphan.serial == orphan_serial
        expected = OrphanFate.ALREADY_DEAD if ca_event == "expired" else OrphanFate.REVOKED
        assert orphan.fate is expected
        assert journal.device(device_id).serial != orphan_serial
    dead = "rejected" if ca_event == "expired" else "revoked"
    assert ca.counts() == {"issued": 1, dead: 1}
    assert ca.authority.store.get(int(orphan_serial, 16)).status == CertRecordStatus(dead)  # type: ignore[arg-type, union-attr]
    cert = load_certificate(out / device_id / "cert.pem")
    assert format(cert.serial_number, "X") != orphan_serial


async def test_transient_failures_are_retried_permanent_ones_recorded(ca: LoopbackCa, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 4)
    with manifest.open("a") as f:  # a device whose secret the CA does not know
        f.write("bad-secret,/CN=bad,,pass:not-the-secret\n")
    out = tmp_path / "out"
    answered = {"n": 0}

    async def flaky(request: HttpRequest, msg: messages.PKIMessage) -> HttpResponse | None:
        if msg.header.sender_kid == b"bad-secret":
            return None  # its one request must meet the CA's badMessageCheck, not a 503
        answered["n"] += 1
        if answered["n"] % 3 == 1:
            return HttpResponse(503, b"busy\n", content_type="text/plain")
        return None

    ca.hook = flaky
    stats, summary = await provision(ca, manifest, out, max_attempts=6)
    rows = {r["id"]: r for r in summary["results"]}  # type: ignore[union-attr]
    assert all(rows[i]["outcome"] == "provisioned" for i in ids)
    bad = rows["bad-secret"]
    assert bad["outcome"] == "failed" and bad["state"] == "failed"
    assert bad["fail_info"] == "badMessageCheck" and bad["requests"] == 1  # permanent: not retried
    assert stats.retries >= 1 and summary["complete"] is False
    assert "not-the-secret" not in str(summary)


async def test_unverifiable_refusal_is_a_failure_not_an_orphan(ca: LoopbackCa, tmp_path: Path) -> None:
    """Without --trusted the CA's signed refusal of a wrong secret cannot be checked; it is still
    a refusal (the CA issued nothing): the device fails with what the CA said, no orphan."""
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 2)
    with manifest.open("a") as f:
        f.write("bad-secret,/CN=bad,,pass:not-the-secret\n")
    stats, summary = await provision(ca, manifest, tmp_path / "out", trusted=())
    rows = {r["id"]: r for r in summary["results"]}  # type: ignore[union-attr]
    assert all(rows[i]["outcome"] == "provisioned" for i in ids)
    bad = rows["bad-secret"]
    assert bad["outcome"] == "failed" and bad["fail_info"] == "badMessageCheck" and bad["requests"] == 1
    assert bad["error_kind"] == "unverified_refusal" and "unverified" in str(bad["error"])
    assert bad["orphans"] == [] and summary["orphans"] == {} and stats.possible_orphans == 0


async def test_rejecting_certconf_lost_leaves_the_orphan_to_the_ca(ca: LoopbackCa, tmp_path: Path) -> None:
    """The certificate cannot be stored and the certConf rejecting it never reaches the CA: the
    orphan is recorded (with its certificate) as left to the CA, which rejects it at
    confirmWaitTime; the device fails, the others are issued."""
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 3)
    out = tmp_path / "out"
    (out / ids[1] / "ca.pem").mkdir(parents=True)  # written before cert.pem: the store fails

    async def drop_its_certconf(request: HttpRequest, msg: messages.PKIMessage) -> HttpResponse | None:
        if msg.label == "certConf" and msg.header.sender_kid == ids[1].encode():
            return HttpResponse(0, drop_connection=True)
        return None

    ca.hook = drop_its_certconf
    stats, summary = await provision(ca, manifest, out)
    assert stats.provisioned == 2 and stats.failed == 1 and stats.retries == 0  # no retry: a person must fix it
    row = {r["id"]: r for r in summary["results"]}[ids[1]]  # type: ignore[union-attr]
    assert row["outcome"] == "failed" and row["error_kind"] == "output_error"
    assert str(row["error"]).startswith("cannot store the certificate files: Is a directory: ")
    assert summary["orphans"] == {"left_to_ca_expiry": 1}
    with journal_view(out) as journal:
        (orphan,) = journal.orphans_of(ids[1])
        assert orphan.fate is OrphanFate.LEFT_TO_CA and orphan.received and orphan.certificate is not None
        assert "the rejecting certConf was not acknowledged" in orphan.detail
        assert journal.device(ids[1]).state is DeviceState.FAILED
    assert ca.counts() == {"issued": 2, "pending": 1}
    ca.tick(time.time() + 3600)  # confirmWaitTime passes
    assert ca.counts() == {"issued": 2, "rejected": 1}
    assert ca.authority.store.get(int(orphan.serial or "0", 16)).status is CertRecordStatus.REJECTED  # type: ignore[union-attr]


async def test_unreadable_key_file_fails_that_device_alone(ca: LoopbackCa, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 4)
    out = tmp_path / "out"
    (out / ids[2]).mkdir(parents=True)
    (out / ids[2] / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    stats, summary = await provision(ca, manifest, out)
    rows = {r["id"]: r for r in summary["results"]}  # type: ignore[union-attr]
    assert [rows[i]["outcome"] for i in ids] == ["provisioned", "provisioned", "failed", "provisioned"]
    assert rows[ids[2]]["requests"] == 0 and "holds no readable private key" in str(rows[ids[2]]["error"])
    assert stats.failed == 1 and ca.counts() == {"issued": 3}


async def test_idevid_and_p10cr_devices(tmp_path: Path, nursery: trio.Nursery) -> None:
    from provision_helpers import VendorPki, make_csr

    vendor = VendorPki(tmp_path / "vendor")
    ca = LoopbackCa(tmp_path / "ca", vendor=(vendor.root,))
    await ca.serve(nursery)
    cert, key = vendor.idevid("sig-1")
    csr, csr_key = make_csr(tmp_path / "vendor", "p10-1", keep_key=True)
    text = (
        "id,subject,cert,key,secret,csr,csr_key\n"
        f"sig-1,/CN=sig-1,{cert},{key},,,\n"
        f"p10-1,,,,pass:{secret_for('p10-1')},{csr},{csr_key}\n"
    )
    devices = parse_manifest(text)
    out = tmp_path / "out"
    with Journal.open(out / "journal.sqlite") as journal:
        stats = await Provisioner(devices, journal, options(ca, out)).run()
    assert stats.provisioned == 2
    assert not (out / "p10-1" / "key.pem").exists()  # the device keeps its key
    issued = load_certificate(out / "p10-1" / "cert.pem")
    assert issued.subject == x509.Name.from_rfc4514_string("CN=p10-1")
    assert load_certificate(out / "sig-1" / "ca.pem") == ca.root()
    assert ca.seen.count("p10cr") == 1 and ca.seen.count("ir") == 1


def test_transient_classification() -> None:
    from fleet.cmp.errors import RequestRejected
    from fleet.http.errors import ConnectError, HttpStatusError

    class Status:
        fail_names = ("systemUnavail",)

    class Other:
        fail_names = ("badPOP",)

    assert is_transient(ConnectError("u", "refused"))
    assert is_transient(HttpStatusError("u", 503, "text/plain"))
    assert not is_transient(HttpStatusError("u", 404, "text/plain"))
    assert is_transient(RequestRejected("x", Status()))
    assert not is_transient(RequestRejected("x", Other()))
    assert BodyType.CERTCONF.label == "certConf"
    assert outputs.CERT_FILE == "cert.pem"


async def test_metrics_count_what_the_summary_reports(ca: LoopbackCa, tmp_path: Path) -> None:
    """fleet provision --metrics-port: the same observer as fleet run, fed per transaction."""
    from fleet.load.metrics import FleetMetrics

    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 6)
    with manifest.open("a") as f:
        f.write("bad-secret,/CN=bad,,pass:not-the-secret\n")
    metrics = FleetMetrics(worker="provision")
    stats, _summary = await provision(ca, manifest, tmp_path / "out", observer=metrics)
    text = metrics.exposition().decode()

    def value(name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert stats.provisioned == 6
    assert value("fleet_transactions_completed_total", operation="ir", result="ok") == 6
    assert value("fleet_transactions_completed_total", operation="ir", result="failed") >= 1
    assert value("fleet_transaction_fail_info_total", operation="ir", fail_info="badMessageCheck") >= 1
    assert "not-the-secret" not in text and "bad-secret" not in text


# -- in process, in virtual time: retry, backoff and deadlines under trio's MockClock -----------


class Faulty:
    """An in-process transport to ``ca`` whose first ``failures`` posts of ``label`` fail with a
    transport error the CA never sees; logs (virtual time, message label) of every post."""

    def __init__(self, ca: LoopbackCa, *, label: str = "ir", failures: int = 0, latency: float = 0.0) -> None:
        self.inner = InProcessTransport(ca.server, latency=latency)
        self.label = label
        self.failures = failures
        self.log: list[tuple[float, str]] = []
        self.on_post: Callable[[str], None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None) -> CmpResponse:
        label = messages.decode(data).label
        self.log.append((trio.current_time(), label))
        if self.on_post is not None:
            self.on_post(label)
        if label == self.label and self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise TransportError("in-process CA", "unreachable (injected)", kind="connect")
        return await self.inner.post(data, path=path, deadline=deadline)


async def provision_in_process(ca: LoopbackCa, transport: Faulty, manifest: Path, out: Path,
                               **kw: object) -> tuple[RunStats, dict[str, object]]:
    devices = load_manifest(manifest)
    with Journal.open(out / "journal.sqlite") as journal:
        provisioner = Provisioner(devices, journal, options(ca, out, **kw), transport=lambda: transport)
        stats = await provisioner.run()
        return stats, summarize(devices, journal, stats)


@pytest.fixture
def quiet_ca(tmp_path: Path) -> LoopbackCa:
    """The CA without its HTTP front: only in-process transports reach it."""
    return LoopbackCa(tmp_path / "ca")


async def test_backoff_is_exponential_with_full_jitter_in_virtual_time(
    quiet_ca: LoopbackCa, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Retry k waits uniform(0, min(backoff_max, backoff_base * 2**(k-1))) drawn from the seeded
    jitter, and nothing else: the gaps between the attempts are exactly those draws."""
    manifest = tmp_path / "m.csv"
    (device_id,) = mac_manifest(manifest, 1)
    transport = Faulty(quiet_ca, failures=4)
    stats, summary = await provision_in_process(quiet_ca, transport, manifest, tmp_path / "out",
                                                max_attempts=5, backoff_base=2.0, backoff_max=5.0, seed=7)
    times = [t for t, label in transport.log if label == "ir"]
    jitter = random.Random(7)
    expected = [jitter.uniform(0, cap) for cap in (2.0, 4.0, 5.0, 5.0)]
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx(expected, abs=1e-9)
    assert stats.retries == 4 and stats.provisioned == 1 and summary["complete"] is True
    assert [label for _, label in transport.log] == ["ir"] * 5 + ["certConf"]
    assert quiet_ca.counts() == {"issued": 1}
    with journal_view(tmp_path / "out") as journal:  # each failed ir may have reached a CA: left to it
        assert [o.fate for o in journal.orphans_of(device_id)] == [OrphanFate.LEFT_TO_CA] * 4


async def test_gives_up_after_max_attempts_in_virtual_time(
    quiet_ca: LoopbackCa, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 1)
    transport = Faulty(quiet_ca, failures=100)
    start = trio.current_time()
    stats, summary = await provision_in_process(quiet_ca, transport, manifest, tmp_path / "out",
                                                max_attempts=3, backoff_base=10.0, backoff_max=10.0, seed=3)
    jitter = random.Random(3)
    waited = jitter.uniform(0, 10.0) + jitter.uniform(0, 10.0)  # two waits between three attempts
    assert trio.current_time() - start == pytest.approx(waited, abs=1e-9)
    assert len(transport.log) == 3 and stats.retries == 3 and stats.failed == 1
    row = summary["results"][0]  # type: ignore[index]
    assert (row["outcome"], row["error_kind"], row["state"]) == ("failed", "connect", "key")
    assert "unreachable (injected)" in str(row["error"])


async def test_certificate_is_stored_before_its_certconf_is_sent(
    quiet_ca: LoopbackCa, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    manifest = tmp_path / "m.csv"
    (device_id,) = mac_manifest(manifest, 1)
    out = tmp_path / "out"
    transport = Faulty(quiet_ca)
    at_certconf: list[tuple[bool, DeviceState]] = []
    with Journal.open(out / "journal.sqlite") as journal:

        def check(label: str) -> None:
            if label == "certConf":
                at_certconf.append(((out / device_id / "cert.pem").exists(), journal.device(device_id).state))

        transport.on_post = check
        provisioner = Provisioner(load_manifest(manifest), journal, options(quiet_ca, out), transport=lambda: transport)
        stats = await provisioner.run()
    assert at_certconf == [(True, DeviceState.RECEIVED)] and stats.provisioned == 1


async def test_a_late_certconf_answer_times_out_and_the_stored_certificate_is_confirmed_later(
    quiet_ca: LoopbackCa, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Every answer takes 4 s and a transaction may take 6: the ip comes at 4 s and is stored,
    the certConf's answer would come at 8 s, so the transaction times out at 6 s. The retry
    continues the same transaction (its stored ip, a new certConf), answered at 4 s again."""
    manifest = tmp_path / "m.csv"
    (device_id,) = mac_manifest(manifest, 1)
    out = tmp_path / "out"
    transport = Faulty(quiet_ca, latency=4.0)
    start = trio.current_time()
    stats, summary = await provision_in_process(quiet_ca, transport, manifest, out, timeout=6.0,
                                                backoff_base=1.0, backoff_max=1.0, seed=5)
    backoff = random.Random(5).uniform(0, 1.0)
    assert [(t - start, label) for t, label in transport.log] == pytest.approx(
        [(0.0, "ir"), (4.0, "certConf"), (6.0 + backoff, "certConf")])
    assert trio.current_time() - start == pytest.approx(10.0 + backoff)
    assert stats.retries == 1 and summary["complete"] is True
    with journal_view(out) as journal:
        assert [e[1] for e in journal.events(device_id)] == ["key", "sent", "received", "confirmed_resumed"]
    assert quiet_ca.counts() == {"issued": 1}
