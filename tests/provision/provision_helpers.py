"""Helpers for the provisioning tests: device PKI material, manifests, an in-process CA with fault
hooks, ``fleet ca serve`` as a subprocess, and ``fleet provision`` as a subprocess.

Named uniquely (not conftest) so it cannot shadow another folder's helpers.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.ca.authority import Authority
from fleet.ca.store import CertStore
from fleet.cmp import messages
from fleet.cmp.server import CmpServer, ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.http.server import HttpRequest, HttpResponse, serve_http

MASTER = b"provision-test-master"


def secret_for(ref: str) -> str:
    return derive_device_secret(MASTER, ref.encode()).decode()


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class VendorPki:
    """A vendor root and IDevID certificates made on demand, written under ``folder``."""

    folder: Path
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.root = _cert(name("Vendor Root"), self.root_key, name("Vendor Root"), self.root_key, True)
        self.root_path = self.folder / "vendor-root.pem"
        self.root_path.write_bytes(pem(self.root))

    def idevid(self, device_id: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name(f"IDevID {device_id}"), key, self.root.subject, self.root_key, False)
        cert_path = self.folder / f"{device_id}-idevid.pem"
        key_path = self.folder / f"{device_id}-idevid.key"
        cert_path.write_bytes(pem(cert))
        key_path.write_bytes(key_pem(key))
        return cert_path, key_path


def make_csr(folder: Path, device_id: str, *, keep_key: bool) -> tuple[Path, Path | None]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(name(device_id)).sign(key, hashes.SHA256())
    csr_path = folder / f"{device_id}.csr"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    key_path = None
    if keep_key:
        key_path = folder / f"{device_id}.csrkey"
        key_path.write_bytes(key_pem(key))
    return csr_path, key_path


def mac_manifest(path: Path, count: int, prefix: str = "d") -> list[str]:
    ids = [f"{prefix}{i:04d}" for i in range(count)]
    lines = ["id,subject,sans,secret"]
    lines += [f"{i},/CN={i}/O=Fleet,DNS:{i}.example,pass:{secret_for(i)}" for i in ids]
    path.write_text("\n".join(lines) + "\n")
    return ids


# -- an in-process CA with hooks ---------------------------------------------------------------

Hook = Callable[[HttpRequest, messages.PKIMessage], Awaitable[HttpResponse | None]]


class LoopbackCa:
    """fleet's Authority and CmpServer behind fleet's HTTP server on 127.0.0.1, in this process.

    ``hook(request, message)`` may answer instead of the CA (drop the connection, 503) or return
    None to let the CA answer. ``tick()`` runs the CA's expiry now. ``restart_server()`` forgets
    live transactions, as a CA process restart would.
    """

    def __init__(self, folder: Path, *, confirm_wait: float = 60.0, vendor: tuple[x509.Certificate, ...] = ()) -> None:
        self.authority = Authority.open(folder, base_url="http://127.0.0.1:9")
        self.config = ServerConfig(confirm_wait=confirm_wait, grant_implicit_confirm=False)
        self.vendor = vendor
        self.server = self._make_server()
        self.hook: Hook | None = None
        self.port = 0
        self.seen: list[str] = []
        self.root_path = folder / "trusted-root.pem"
        self.root_path.write_bytes(pem(self.root()))

    def _make_server(self) -> CmpServer:
        return self.authority.server(config=self.config, secrets=SharedSecrets(master=MASTER), vendor=self.vendor)

    def restart_server(self) -> None:
        self.server = self._make_server()

    def tick(self, now: float | None = None) -> None:
        self.server.tick(now if now is not None else time.time())

    def root(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.authority.root)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/cmp"

    async def handle(self, request: HttpRequest) -> HttpResponse:
        msg = messages.decode(request.body)
        self.seen.append(msg.label)
        if self.hook is not None:
            answer = await self.hook(request, msg)
            if answer is not None:
                return answer
        reply = self.server.handle(request.body, time.time())
        return HttpResponse(200, reply.data)

    async def serve(self, nursery: trio.Nursery) -> None:
        self.port = await nursery.start(serve_http, self.handle, "127.0.0.1", 0)

    def counts(self) -> dict[str, int]:
        self.authority.store.flush()
        return {k: v for k, v in self.authority.store.counts_by_status().items() if v}


# -- subprocesses ------------------------------------------------------------------------------


class CaProcess:
    """``fleet ca serve`` on a free port, stopped with SIGINT (its store flushes on the way out)."""

    def __init__(self, folder: Path, *extra: str, confirm_wait: float = 3.0) -> None:
        self.folder = folder
        self.dir = folder / "ca"
        self.log = folder / "ca.log"
        args = [sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(self.dir), "--port", "0",
                "--master-secret", f"pass:{MASTER.decode()}", "--confirm-wait", str(confirm_wait),
                "--no-implicit-confirm", *extra]
        with open(self.log, "wb") as sink:
            self.proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            text = self.log.read_text(errors="replace")
            match = re.search(r"\(port (\d+)\)", text)
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"fleet ca serve did not start: {text[-2000:]}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/.well-known/cmp"
        self.root_path = self.dir / "root-ca.pem"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def store(self) -> CertStore:
        return CertStore(self.dir / "certs.sqlite")


def provision_argv(*args: str) -> list[str]:
    """``fleet provision ...`` as a subprocess."""
    return [sys.executable, "-m", "fleet.cli.main", "provision", *args]


def run_provision(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(provision_argv(*args), check=False, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)
