"""Start fleet's own CA as a child process for a run with no ``--server``.

The child is ``python -m fleet.ca``, given the profile's ``[ca]`` settings as a
``fleet.ca.config.CaConfig`` on stdin (with the master secret, so it is on no command line and
in no environment). A separate process, pinned to the last core when there are several, so the
CA's CPU does not compete with the devices' in one interpreter. It is always stopped at the end
of the run.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from fleet.ca.config import CaConfig
from fleet.errors import FleetError
from fleet.load.child import free_port, last_log_line, stop_child


class EmbeddedCaError(FleetError):
    """The embedded CA could not be started."""


class EmbeddedCa:
    """``with EmbeddedCa(...) as ca: ca.url, ca.root_path, ca.master_secret``."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        config: CaConfig | None = None,
        vendor_trust: Path | None = None,
        metrics_port: int | None = None,
        startup_timeout: float = 30.0,
        coap: bool = False,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-ca-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.config = config or CaConfig()
        self.vendor_trust = vendor_trust
        self.metrics_port = metrics_port
        self.startup_timeout = startup_timeout
        self.master_secret = secrets.token_hex(16).encode()
        self.port = 0
        self.coap = coap  # also serve CMP over CoAP (``coap_url``)
        self.coap_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.state_dir / "ca.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/cmp"

    @property
    def coap_url(self) -> str:
        return f"coap://127.0.0.1:{self.coap_port}/.well-known/cmp"

    @property
    def root_path(self) -> Path:
        return self.state_dir / "root-ca.pem"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fleet.ca"]

    def ca_config(self) -> CaConfig:
        """The profile's settings plus where this CA lives, listens and what it trusts. Key reuse
        is allowed: a run's device keys come from a key pool that is handed out again once it
        runs dry, and again in the next run."""
        return replace(
            self.config, state=self.state_dir, host="127.0.0.1", port=self.port,
            master_secret=self.master_secret, vendor_trust=self.vendor_trust, metrics_port=self.metrics_port,
            allow_key_reuse=True, coap_port=self.coap_port,
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = free_port()
        if self.coap:
            self.coap_port = free_port(socket.SOCK_DGRAM)
        config = self.ca_config().to_json().encode()
        cores = os.cpu_count() or 1

        def pin() -> None:  # the CA takes the last core; devices run on the others
            if cores > 1 and hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, {cores - 1})

        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                preexec_fn=pin,  # noqa: PLW1509  # only sets the CPU affinity: safe after fork
                start_new_session=True,  # Ctrl-C reaches the run, which stops the CA after reporting
            )
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(config)
            self._proc.stdin.close()
        except BrokenPipeError:  # it exited at once; the loop below reports its last line
            pass
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedCaError(f"embedded CA exited at start: {last_log_line(self._log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            # Ready once it has said so: its CoAP socket is bound before that line, and the line
            # follows the HTTP bind (a connection may be accepted a moment before it is written).
            if "fleet CA listening on" in self._log_path.read_text(errors="replace"):
                return
            time.sleep(0.02)
        self.stop()
        raise EmbeddedCaError(f"embedded CA did not listen within {self.startup_timeout:g} s: {last_log_line(self._log_path)}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_child(proc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
