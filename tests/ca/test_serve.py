"""The CA's composition root (fleet.ca.serve) in process, and ``python -m fleet.ca`` started from a
CaConfig as JSON on stdin, the way ``fleet run`` starts its embedded CA."""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.ca.authority import STORE_FILE
from fleet.ca.config import CaConfig, LoadKnobs
from fleet.ca.serve import serve
from fleet.ca.service import CaService, CaStatistics
from fleet.ca.store import CertStore
from fleet.cmp.client import ClientConfig, ClientTransaction, Done
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerStatistics
from fleet.cmp.shared_secrets import derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.exchange import run_transaction
from fleet.http.client import CmpHttpClient

ROOT = Path(__file__).resolve().parents[2]
MASTER = b"serve-test-master"


async def enroll(url: str, root: x509.Certificate, reference: str, secret: bytes) -> Done:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, reference)])
    config = ClientConfig(
        protector=MacProtector(secret, reference=reference.encode()), trust=TrustStore([root])
    )
    tx = ClientTransaction(config, CertRequest(BodyType.IR, key, subject=subject))
    async with CmpHttpClient(url) as client:
        return await run_transaction(client, tx, timeout=20)


async def test_serve_builds_the_ca_from_its_config(tmp_path: Path) -> None:
    config = CaConfig(
        state=tmp_path / "state", port=0, master_secret=MASTER, mode="3gpp", knobs=LoadKnobs(seed=3)
    )
    async with trio.open_nursery() as nursery:
        service: CaService = await nursery.start(serve, config)
        assert service.base_url is not None and service.config.mode == "3gpp"
        root = service.authority.hierarchy.root
        done = await enroll(
            f"{service.base_url}/.well-known/cmp",
            root,
            "dev-1",
            derive_device_secret(MASTER, b"dev-1"),
        )
        assert done.certificate is not None
        service.tick()
        stats = service.statistics()
        nursery.cancel_scope.cancel()
    assert isinstance(stats, CaStatistics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.http = {}  # type: ignore[misc]
    assert stats.certificates.get("issued") == 1
    assert set(stats.servers) == {"lcmpp", "3gpp"}
    assert all(isinstance(s, ServerStatistics) for s in stats.servers.values())
    assert stats.servers["3gpp"].issued == 1 and stats.servers["lcmpp"].issued == 0
    assert stats.outcomes[("ir", "accepted", "")] == 1
    assert stats.connections.connections_total >= 1
    assert (tmp_path / "state" / "root-ca.pem").exists()
    store = CertStore(tmp_path / "state" / STORE_FILE)  # closed by serve on the way out, durable
    try:
        assert store.counts_by_status().get("issued") == 1
    finally:
        store.close()


def _start(*args: str, stdin: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """``python -m fleet.ca ARGS`` from this checkout, output merged into stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "fleet.ca", *args],
        cwd=ROOT,
        text=True,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


class _Output:
    """A process's stdout lines, read by a thread (select() cannot see lines an earlier
    readline() already buffered)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        stdout = proc.stdout
        self.proc = proc
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [self.queue.put(line) for line in iter(stdout.readline, "")], daemon=True
        ).start()

    def until(self, text: str, timeout: float = 60) -> list[str]:
        """Lines up to the first holding ``text``; the process is killed if it never comes."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.queue.empty():
                    break
                continue
            seen.append(line)
            if text in line:
                return seen
        self.proc.kill()
        self.proc.wait(5)
        raise AssertionError(f"no {text!r} from python -m fleet.ca: " + "".join(seen))


BANNER_END = "signatures by certificates"  # the last line a CA always prints at start


def _port(lines: list[str]) -> int:
    listening = next(line for line in lines if "listening on" in line)
    return int(listening.rsplit("(port ", 1)[1].split(")")[0])


def test_python_m_fleet_ca_serves_the_config_on_stdin(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = CaConfig(
        state=state,
        port=0,
        master_secret=MASTER,
        knobs=LoadKnobs(error_fraction=0.0, seed=1),
        mode="3gpp",
        validity_days=2,
    )
    proc = _start()
    assert proc.stdin is not None
    proc.stdin.write(config.to_json())
    proc.stdin.close()
    output = _Output(proc)
    try:
        lines = output.until(BANNER_END)
        port = _port(lines)
        text = "".join(lines)
        assert "mode: 3gpp" in text and "per-device secrets" in text
        # The master secret reaches the CA on stdin only: not in its arguments or environment.
        for name in ("cmdline", "environ"):
            raw = Path(f"/proc/{proc.pid}/{name}").read_bytes()
            assert MASTER not in raw and MASTER.hex().encode() not in raw
        root = x509.load_pem_x509_certificate((state / "root-ca.pem").read_bytes())
        done = trio.run(
            enroll,
            f"http://127.0.0.1:{port}/.well-known/cmp",
            root,
            "dev-7",
            derive_device_secret(MASTER, b"dev-7"),
        )
        assert done.certificate is not None
        cert = x509.load_der_x509_certificate(done.certificate)
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in (
            2,
            3,
        )  # validity_days (plus backdating)
    finally:
        proc.send_signal(signal.SIGTERM)
        output.until("fleet CA stopping", timeout=30)
        proc.wait(30)
    assert proc.returncode == 0
    store = CertStore(state / STORE_FILE)
    try:
        assert store.counts_by_status().get("issued") == 1
    finally:
        store.close()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            '{"waiting_fraction": 2}',
            "fleet: error: waiting_fraction: must be a fraction between 0 and 1, got 2",
        ),
        ("not json", "fleet: error: config: not valid JSON"),
        ('{"port": 0}', "fleet: error: state: is needed to serve"),
    ],
)
def test_python_m_fleet_ca_refuses_a_bad_config_in_one_line(config: str, words: str) -> None:
    proc = _start()
    out, _ = proc.communicate(config, timeout=60)
    assert proc.returncode == 1
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(words), out


def _python_m_fleet_ca(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.ca", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_python_m_fleet_ca_usage(tmp_path: Path) -> None:
    help_run = _python_m_fleet_ca("--help")
    assert help_run.returncode == 0 and "CaConfig as JSON" in help_run.stdout
    config = tmp_path / "ca.json"
    config.write_text(CaConfig(state=tmp_path / "s", port=0).to_json())
    extra = _python_m_fleet_ca(str(config), "more")
    assert extra.returncode == 2 and extra.stderr.startswith("usage:")
    assert not (tmp_path / "s").exists()


def test_python_m_fleet_ca_reads_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "ca.json"
    config.write_text(CaConfig(state=tmp_path / "s", port=0, secret=b"demo").to_json())
    proc = _start(str(config), stdin=subprocess.DEVNULL)
    try:
        lines = _Output(proc).until(BANNER_END)
        assert any("MAC (PBM/PBMAC1) with the --secret for any reference" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert (tmp_path / "s" / "root-ca.pem").exists()
