"""Start fleet's own CA (``fleet ca serve``) as a child process for a run with no ``--server``.

A separate process, pinned to the last core when there are several, so the CA's CPU does not
compete with the devices' in one interpreter. It is always stopped at the end of the run.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from fleet.errors import FleetError


class EmbeddedCaError(FleetError):
    """The embedded CA could not be started."""


# profile [ca] key -> `fleet ca serve` option
_KNOB_FLAGS = {
    "latency": "--latency",
    "waiting_fraction": "--waiting-fraction",
    "check_after": "--check-after",
    "error_fraction": "--error-fraction",
    "http_503_fraction": "--http-503-fraction",
    "drop_fraction": "--drop-fraction",
    "max_transactions": "--max-transactions",
    "confirm_wait": "--confirm-wait",
    "validity_days": "--validity-days",
    "key_type": "--key-type",
    "seed": "--seed",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedCa:
    """``with EmbeddedCa(...) as ca: ca.url, ca.root_path, ca.master_secret``."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        options: Mapping[str, object] | None = None,
        vendor_trust: Path | None = None,
        metrics_port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-ca-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.options = dict(options or {})
        self.vendor_trust = vendor_trust
        self.metrics_port = metrics_port
        self.startup_timeout = startup_timeout
        self.master_secret = secrets.token_hex(16).encode()
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.state_dir / "ca.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/cmp"

    @property
    def root_path(self) -> Path:
        return self.state_dir / "root-ca.pem"

    def command(self) -> list[str]:
        args = [
            sys.executable, "-m", "fleet.cli.main", "ca", "serve",
            "--dir", str(self.state_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--master-secret", "env:FLEET_CA_MASTER_SECRET",
        ]
        mode = self.options.get("mode")
        if mode:
            args += ["--mode", str(mode)]
        for key, flag in _KNOB_FLAGS.items():
            if key in self.options:
                args += [flag, str(self.options[key])]
        if "implicit_confirm" in self.options:
            args.append("--implicit-confirm" if self.options["implicit_confirm"] else "--no-implicit-confirm")
        if self.vendor_trust is not None:
            args += ["--vendor-trust", str(self.vendor_trust)]
        if self.metrics_port is not None:
            args += ["--metrics-port", str(self.metrics_port)]
        return args

    def __enter__(self) -> EmbeddedCa:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = _free_port()
        env = dict(os.environ, FLEET_CA_MASTER_SECRET=self.master_secret.decode())
        cores = os.cpu_count() or 1

        def pin() -> None:  # the CA takes the last core; devices run on the others
            if cores > 1 and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {cores - 1})

        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=pin,
                start_new_session=True,  # Ctrl-C reaches the run, which stops the CA after reporting
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedCaError(f"embedded CA exited at start: {self._last_log_line()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedCaError(f"embedded CA did not listen within {self.startup_timeout:g} s: {self._last_log_line()}")

    def _last_log_line(self) -> str:
        try:
            lines = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
