"""What the embedded CA and RA share as child processes of a run: a free loopback port, the last
line of a child's log for a one-line error, and a stop that never leaves the child behind."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["free_port", "last_log_line", "stop_child"]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP by default, ``SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def last_log_line(path: Path | None) -> str:
    """The child's last words, for the error that says why it did not start."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines() if path is not None else []
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def stop_child(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s: the child is gone when this returns."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
