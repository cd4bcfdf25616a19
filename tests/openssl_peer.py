"""OpenSSL 3.0 `openssl cmp` as a real CMP peer for tests: test PKI, mock server, client runner.

fleet must interoperate with OpenSSL in both directions, so tests talk to the real `openssl` binary
instead of a fake: `OpenSSLMockServer` is the CA side (`openssl cmp -port`), `run_openssl_cmp` the
client side. Clients connect to 127.0.0.1 only and every subprocess is bounded in time.

Import from tests as `from openssl_peer import ...` (tests/ is on sys.path through
tests/conftest.py), or use the fixtures `test_pki` (session) and `openssl_mock` (function-scoped
factory).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest

__all__ = [
    "OPENSSL",
    "OpenSSLMockServer",
    "PeerError",
    "TestPki",
    "make_test_pki",
    "openssl_mock",
    "pbm_client_args",
    "run_openssl_cmp",
    "sig_client_args",
    "test_pki",
]

OPENSSL = shutil.which("openssl") or "openssl"
_ACCEPT_RE = re.compile(rb"ACCEPT \S*:(\d+) PID=")


class PeerError(RuntimeError):
    """The OpenSSL peer could not be set up (a test-environment problem, not a fleet error)."""


# --------------------------------------------------------------------------------------------
# Test PKI
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestPki:
    """Paths of an EC P-256 test PKI: a root, a server and a client cert, and a key to enroll.

    `rsp_crt` is the certificate the mock server hands out for every enrollment; it certifies
    `new_key`, so a client that enrolled `new_key` can go on with kur/rr using `rsp_crt`.
    """

    __test__ = False  # not a pytest test class despite the name

    dir: Path
    root_crt: Path
    root_key: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    new_key: Path
    new_csr: Path
    rsp_crt: Path
    secret: str = "test1234"
    ref: str = "1234"

    @property
    def secret_arg(self) -> str:
        """The shared secret as an OpenSSL password source (`pass:...`)."""
        return f"pass:{self.secret}"


_EE_EXT = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid\n"
)
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(args: Sequence[str], cwd: Path, timeout: float = 10) -> None:
    proc = subprocess.run(
        [OPENSSL, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise PeerError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")


def make_test_pki(dir: Path, days: int = 365) -> TestPki:
    """Build the test PKI under `dir` with the openssl CLI: an EC root CA, end-entity
    certificates for the mock server (`server`) and a signing client (`client`), a new key with
    its CSR (`new`) and `rsp.crt`, the certificate the mock server returns for every enrollment.

    Key files are written 0600.
    """
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        ["req", "-x509", *_EC, "-keyout", "root.key", "-out", "root.crt", "-days", str(days),
         "-subj", "/CN=Test Root CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-config", os.devnull],
        d,
    )
    (d / "ee.ext").write_text(_EE_EXT)
    for name in ("server", "client", "new"):
        _openssl(["req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-subj", f"/CN={name}", "-config", os.devnull], d)
    # rsp.crt certifies new.key: it is what the mock server returns for every enrollment.
    for csr, out in (("server", "server"), ("client", "client"), ("new", "rsp")):
        _openssl(["x509", "-req", "-in", f"{csr}.csr", "-CA", "root.crt", "-CAkey", "root.key",
                  "-CAcreateserial", "-out", f"{out}.crt", "-days", str(days),
                  "-extfile", "ee.ext"], d)
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return TestPki(
        dir=d,
        root_crt=d / "root.crt", root_key=d / "root.key",
        server_crt=d / "server.crt", server_key=d / "server.key",
        client_crt=d / "client.crt", client_key=d / "client.key",
        new_key=d / "new.key", new_csr=d / "new.csr", rsp_crt=d / "rsp.crt",
    )


def rogue_root(folder: Path) -> Path:
    """A self-signed CA certificate nobody trusts (``folder/rogue.crt``), as an attacker's caPubs."""
    _openssl(["req", "-x509", *_EC, "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "30",
              "-subj", "/CN=Rogue Root", "-addext", "basicConstraints=critical,CA:TRUE", "-config", os.devnull],
             folder)
    (folder / "rogue.key").chmod(0o600)
    return folder / "rogue.crt"


# --------------------------------------------------------------------------------------------
# Mock server
# --------------------------------------------------------------------------------------------

OptionValue = str | int | bool | Path | None


def _option_args(options: Mapping[str, OptionValue]) -> list[str]:
    """{'poll_count': 2, 'grant_implicitconf': True, 'x': None} -> ['-poll_count', '2', ...]."""
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        args.append(f"-{name}")
        if value is not True:
            args.append(str(value))
    return args


class OpenSSLMockServer:
    """`openssl cmp -port` as a running CMP server on loopback, for use as a context manager.

    Keyword options map to mock-server flags: `poll_count=2` -> `-poll_count 2`,
    `grant_implicitconf=True` -> `-grant_implicitconf`; `None`/`False` drops a flag, which also
    removes a default (e.g. `srv_secret=None` gives a server that only does signatures).
    `extra_args` are appended verbatim. Defaults: MAC (`srv_ref`, `srv_secret`) and signature
    (`srv_cert`, `srv_key`, `srv_trusted`) protection, `rsp_cert` and `rsp_capubs` from the test PKI.

    The server listens on port 0 chosen by the kernel and reports it ("ACCEPT [::]:PORT") in its
    log, so there is no race on free ports; startup is still retried a few times. It serves one
    transaction at a time: clients should run one after another (and `-keep_alive 0` is faster).
    It binds all interfaces ([::]) because OpenSSL 3.0 cannot bind an address; tests use
    127.0.0.1 only.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        pki: TestPki,
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 5.0,
        attempts: int = 3,
        **options: OptionValue,
    ) -> None:
        defaults: dict[str, OptionValue] = {
            "srv_ref": pki.ref,
            "srv_secret": pki.secret_arg,
            "srv_cert": pki.server_crt,
            "srv_key": pki.server_key,
            "srv_trusted": pki.root_crt,
            "rsp_cert": pki.rsp_crt,
            "rsp_capubs": pki.root_crt,
        }
        defaults.update(options)
        self.pki = pki
        self.args: list[str] = [
            OPENSSL, "cmp", "-config", "", "-port", "0", *_option_args(defaults), *extra_args,
        ]
        self.startup_timeout = startup_timeout
        self.attempts = attempts
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: tempfile.TemporaryDirectory[str] | None = None
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>/pkix/` (the mock accepts any path)."""
        if self.port is None:
            raise PeerError("mock server is not running")
        return f"http://{self.host}:{self.port}/pkix/"

    @property
    def server(self) -> str:
        """The `-server` argument for an `openssl cmp` client: `127.0.0.1:<port>/pkix/`."""
        return self.url.removeprefix("http://")

    def log(self) -> str:
        """Everything the server printed so far (for assertion messages)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def start(self) -> Self:
        """Start the server and wait (bounded) until it listens; retried `attempts` times."""
        if self._proc is not None:
            raise PeerError("mock server already started")
        self._logdir = tempfile.TemporaryDirectory(prefix="openssl-mock-")
        last = ""
        for attempt in range(self.attempts):
            self._log_path = Path(self._logdir.name) / f"server{attempt}.log"
            try:
                self._start_once()
                return self
            except PeerError as exc:
                last = str(exc)
                self._kill()
        self.stop()
        raise PeerError(f"openssl mock server did not start after {self.attempts} tries: {last}")

    def _start_once(self) -> None:
        assert self._log_path is not None
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PeerError(f"exited with {self._proc.returncode}: {self.log().strip()}")
            # OpenSSL prints "ACCEPT [::]:PORT" right after listen(), so from then on the kernel
            # accepts connections. No TCP probe: the mock would spend ~1 s on an empty connection
            # before serving the next one.
            match = _ACCEPT_RE.search(self._log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
                return
            time.sleep(0.005)
        raise PeerError(f"not listening after {self.startup_timeout} s: {self.log().strip()}")

    def _kill(self) -> None:
        proc, self._proc, self.port = self._proc, None, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2)

    def stop(self) -> None:
        """Terminate the server (kill if it does not stop within 2 s) and remove its log."""
        self._kill()
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None
            self._log_path = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self.port}" if self.running else "stopped"
        return f"<OpenSSLMockServer {state}>"


# --------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------


def run_openssl_cmp(
    args: Sequence[str | Path], timeout: float = 30, cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `openssl cmp -config "" <args>` with a timeout; stdout/stderr are captured as text.

    Does not raise on a non-zero exit: assert on `returncode` and put `stderr` in the message.
    """
    return subprocess.run(
        [OPENSSL, "cmp", "-config", "", *map(str, args)],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL,
    )


def pbm_client_args(pki: TestPki, server: str) -> list[str]:
    """Client arguments for MAC (PBM) protection with the test PKI's secret and reference."""
    return ["-server", server, "-ref", pki.ref, "-secret", pki.secret_arg,
            "-recipient", "/CN=Test CMP Server"]


def sig_client_args(pki: TestPki, server: str) -> list[str]:
    """Client arguments for signature protection with the client cert, trusting the root."""
    return ["-server", server, "-cert", str(pki.client_crt), "-key", str(pki.client_key),
            "-trusted", str(pki.root_crt)]


# --------------------------------------------------------------------------------------------
# pytest fixtures (re-exported by tests/conftest.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """One EC P-256 test PKI for the whole session."""
    return make_test_pki(tmp_path_factory.mktemp("openssl-pki"))


@pytest.fixture
def openssl_mock(test_pki: TestPki) -> Iterator[Callable[..., OpenSSLMockServer]]:
    """Factory: `openssl_mock(poll_count=2, check_after=1)` returns a started mock server.

    Every server started through the factory is stopped when the test ends.
    """
    servers: list[OpenSSLMockServer] = []

    def start(*, extra_args: Sequence[str] = (), **options: OptionValue) -> OpenSSLMockServer:
        server = OpenSSLMockServer(test_pki, extra_args=extra_args, **options)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
