"""Shared by the CLI tests: run the real ``fleet`` (a subprocess, or ``main()`` in-process), and
start a real ``fleet ca serve`` on a free loopback port."""

from __future__ import annotations

import hmac
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.cli import main as main_module

ROOT = Path(__file__).resolve().parents[2]
MASTER = "demo"  # the README's master secret
DEAD = "http://127.0.0.1:1/.well-known/cmp"  # nothing listens on loopback port 1


def env() -> dict[str, str]:
    """The environment for a ``fleet`` subprocess: this checkout's fleet first on the path."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def fleet(*args: str, cwd: Path | None = None, timeout: float = 120, extra_env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", *args], cwd=cwd or ROOT, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, check=False, env={**env(), **(extra_env or {})},
    )


def fleet_inprocess(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
                    ) -> tuple[int, str, str]:
    """``fleet <args>`` through the real ``main()``; an exception main() lets escape fails the test."""
    main_module._register()
    monkeypatch.setattr(sys, "argv", ["fleet", *args])
    try:
        main_module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, prefix: str = "fleet: error: ") -> str:
    """The single stderr line of a refused command (and no traceback)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_secret(reference: str, master: str = MASTER) -> str:
    """The per-device secret the CA derives: hex(HMAC-SHA256(master, reference))."""
    return hmac.new(master.encode(), reference.encode(), "sha256").hexdigest()


@dataclass
class Ca:
    proc: subprocess.Popen[str]
    port: int
    state: Path
    output: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/cmp"

    def counts(self) -> dict[str, int]:
        """``fleet ca stats`` of this CA, as {status: count}."""
        result = fleet("ca", "stats", "--dir", str(self.state))
        assert result.returncode == 0, result.stderr
        return {k: int(v) for k, v in (line.split() for line in result.stdout.splitlines())}


def start_ca(state: Path, *extra: str, port: int = 0, timeout: float = 60) -> Ca:
    """``fleet ca serve`` as the README starts it (master secret "demo"), on ``port`` (0: any)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(state), "--port", str(port),
         "--master-secret", f"pass:{MASTER}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, env=env(),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                bound = int(line.rsplit("(port ", 1)[1].split(")")[0])
                return Ca(proc, bound, state, lines)
    proc.kill()
    proc.wait(5)
    raise AssertionError("fleet ca serve did not start: " + "".join(lines))


def stop_ca(ca: Ca) -> None:
    ca.proc.send_signal(signal.SIGTERM)
    try:
        ca.proc.wait(15)
    except subprocess.TimeoutExpired:
        ca.proc.kill()
        ca.proc.wait(5)
    if ca.proc.stdout is not None:
        ca.proc.stdout.close()


@contextmanager
def running_ca(state: Path, *extra: str, port: int = 0) -> Iterator[Ca]:
    ca = start_ca(state, *extra, port=port)
    try:
        yield ca
    finally:
        stop_ca(ca)


def wait_for_counts(ca: Ca, expected: dict[str, int], timeout: float = 10) -> dict[str, int]:
    """The CA writes its records in batches: poll ``fleet ca stats`` until they show ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        counts = ca.counts()
        if all(counts.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return counts
        time.sleep(0.3)


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
            octets = bytes.fromhex(address)[::-1]
            found.add(".".join(str(b) for b in octets))
    return found
