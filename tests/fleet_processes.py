"""Start a real ``fleet`` command (``ca serve``, ``cmp listen``, ...) and wait for its listening line.

Import from tests as ``from fleet_processes import start_fleet``."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path


def start_fleet(args: list[str], cwd: Path, marker: str) -> tuple[subprocess.Popen[str], int]:
    """The process and the port its ``marker`` line names (``... (port N)``); killed if it never says it."""
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if marker in line:
                return proc, int(line.rsplit("(port ", 1)[1].split(")")[0])
            if not line:
                break
    proc.kill()
    raise AssertionError(f"{args[:2]} did not start")
