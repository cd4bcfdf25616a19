"""Start ``fleet ra serve`` as a child process between a run's devices and its CA (``[ra] start``).

The RA verifies the devices' requests as any RA would (their MAC secrets derived from the run's
master secret, their certificates chaining to the CA's root, IDevIDs to the run's vendor root)
and forwards them to the CA in the profile's mode. Its credential, its key and the master secret
are files in a private temporary folder (key and secret 0600), never on a command line or in the
environment. It is always stopped at the end of the run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.load.child import free_port, last_log_line, stop_child

__all__ = ["EmbeddedRa", "EmbeddedRaError"]


class EmbeddedRaError(FleetError):
    """The embedded RA could not be started."""


class EmbeddedRa:
    """``with EmbeddedRa(upstream, ...) as ra: ra.url``."""

    def __init__(
        self,
        upstream: str,
        *,
        cert_pem: bytes,
        key_pem: bytes,
        master_secret: bytes | None,
        trusted_pem: bytes,
        vendor_pem: bytes | None = None,
        mode: str = "pass",
        batch_size: int = 1,
        batch_wait: float = 0.05,
        timeout: float = 30.0,
        metrics_port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        """``trusted_pem``: the CA's root (and any other anchors of the devices' certificates),
        which also verifies the CA's answers in the nested and replace modes; ``vendor_pem``: the
        devices' IDevID root."""
        self.upstream = upstream
        self._files = (cert_pem, key_pem, master_secret)
        self.trusted_pem = trusted_pem
        self.vendor_pem = vendor_pem
        self.mode = mode
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.timeout = timeout
        self.metrics_port = metrics_port
        self.startup_timeout = startup_timeout
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/cmp"

    def command(self, folder: Path) -> list[str]:
        args = [
            sys.executable, "-m", "fleet.cli.main", "ra", "serve", "--upstream", self.upstream,
            "--host", "127.0.0.1", "--port", str(self.port), "--mode", self.mode,
            "--batch-size", str(self.batch_size), "--batch-wait", f"{self.batch_wait:g}",
            "--upstream-timeout", f"{self.timeout:g}",
            "--cert", str(folder / "ra.pem"), "--key", str(folder / "ra.key.pem"),
        ]
        if self._files[2] is not None:
            args += ["--master-secret", f"file:{folder / 'master-secret'}"]
        anchors = str(folder / "trusted.pem")
        args += ["--trusted", anchors, "--upstream-trusted", anchors]
        if self.vendor_pem is not None:
            args += ["--vendor-trust", str(folder / "vendor-root.pem")]
        if self.metrics_port is not None:
            args += ["--metrics-port", str(self.metrics_port)]
        return args

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fleet-ra-")
        folder = Path(self._tmp.name)
        cert_pem, key_pem, secret = self._files
        atomic_write(folder / "ra.pem", cert_pem)
        atomic_write(folder / "ra.key.pem", key_pem, mode=0o600)
        if secret is not None:
            atomic_write(folder / "master-secret", secret + b"\n", mode=0o600)
        atomic_write(folder / "trusted.pem", self.trusted_pem)
        if self.vendor_pem is not None:
            atomic_write(folder / "vendor-root.pem", self.vendor_pem)
        self.port = free_port()
        self._log_path = folder / "ra.log"
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(self.command(folder), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                line = last_log_line(self._log_path)
                self.stop()
                raise EmbeddedRaError(f"embedded RA exited at start: {line}")
            if "fleet RA listening on" in self._log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        line = last_log_line(self._log_path)
        self.stop()
        raise EmbeddedRaError(f"embedded RA did not listen within {self.startup_timeout:g} s: {line}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_child(proc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
