"""OpenSSL's own CMP HTTP test tables (80-test_cmp_http, OpenSSL 3.0.20) against `fleet ca serve`.

A CA that only fleet's client has talked to is not proven: these 267 rows drive `openssl cmp`
through connection, verification, credentials, commands and enrollment cases. The tables, the
Mock's client credentials and the runner live outside the repository, in
``<repo>/../shared/interop/openssl-cmp-http/`` (read-only; see its RUN.md). This test:

1. builds a CA hierarchy for the run (the Mock ships no CA private keys): a root and an issuing
   CA, plus expired copies of both with the same names and keys;
2. starts `fleet ca serve` on a free loopback port with ordinary operator options: that
   hierarchy (--issuing-cert/--issuing-key/--chain), the Mock's ``server.crt``/``server.key`` as
   the response-signing credentials, the Mock's original root as an extra trust anchor for
   signed requests (its ``signer.crt`` signs them), the PBM secret ``test``, and
   ``--allow-key-reuse`` (the tables enroll one key file again and again);
3. makes a writable copy of the Mock's client credentials (``new_server_dir.sh``) with the CA
   files replaced as RUN.md says, runs ``cmp_csv_runner.py`` with ``tests/interop/overrides.tsv``
   and a temporary ``--result-dir``, and requires at least 260 rows passed, none failed, and
   every skip either marked TBD/TODO upstream or listed with a reason in overrides.tsv.

Run it alone with ``python3 -m pytest -q -s tests/interop/test_openssl_tables.py`` (about 25 s).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
TABLES = REPO.parent / "shared" / "interop" / "openssl-cmp-http"
MOCK = TABLES / "data" / "openssl-3.0.20" / "80-test_cmp_http_data" / "Mock"
OVERRIDES = Path(__file__).with_name("overrides.tsv")
SERVER = "fleet"  # the server section new_server_dir.sh writes into test.cnf
TOTAL_ROWS = 267
MIN_PASSED = 260
PBM_SECRET = "pass:test"  # pbm_secret of the Mock's test.cnf

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")
SKIP_LINE = re.compile(r"^skip\s+(\w+) L(\d+): .*?  \((.*)\)$")  # runner: "skip   TAG  (REASON)"


def _tables_missing() -> str | None:
    if not (TABLES / "cmp_csv_runner.py").is_file() or not MOCK.is_dir():
        return f"OpenSSL CMP test tables not found at {TABLES} (shared/ is outside the repository)"
    openssl = shutil.which("openssl")
    if openssl is None:
        return "openssl is not installed"
    version = subprocess.run([openssl, "version"], capture_output=True, text=True, timeout=10, check=False).stdout
    if not version.startswith("OpenSSL 3.0."):
        return f"the tables follow OpenSSL 3.0's client; this is {version.strip()!r}"
    return None


# ---------------------------------------------------------------------------------------------
# The CA hierarchy for the run


@dataclass(frozen=True)
class RunCa:
    """PEM files of the hierarchy the CA serves and the client is told to trust."""

    root: Path
    issuing: Path
    issuing_key: Path
    root_expired: Path
    issuing_expired: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet interop"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _ca_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
             issuer_key: ec.EllipticCurvePrivateKey, not_before: datetime, not_after: datetime,
             path_length: int | None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer != subject:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(aki, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def build_run_ca(dest: Path) -> RunCa:
    """Root -> issuing CA (EC P-256), and expired copies of both (same names and keys), which
    the client must not accept as trust anchors."""
    dest.mkdir(mode=0o700)
    now = datetime.now(UTC).replace(microsecond=0)
    root_key, issuing_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name, issuing_name = _name("fleet interop Root CA"), _name("fleet interop Issuing CA")
    valid = (now - timedelta(days=1), now + timedelta(days=3650))
    expired = (now - timedelta(days=400), now - timedelta(days=35))
    root = _ca_cert(root_name, root_key, root_name, root_key, *valid, None)
    issuing = _ca_cert(issuing_name, issuing_key, root_name, root_key, *valid, 0)
    key_pem = issuing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    return RunCa(
        root=_write(dest / "root.crt", _pem(root)),
        issuing=_write(dest / "issuing.crt", _pem(issuing)),
        issuing_key=_write(dest / "issuing.key", key_pem, 0o600),
        root_expired=_write(dest / "root_expired.crt",
                            _pem(_ca_cert(root_name, root_key, root_name, root_key, *expired, None))),
        issuing_expired=_write(dest / "issuing_expired.crt",
                               _pem(_ca_cert(issuing_name, issuing_key, root_name, root_key, *expired, 0))),
    )


# ---------------------------------------------------------------------------------------------
# fleet ca serve


@dataclass
class CaProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


def start_ca(tmp: Path, ca: RunCa) -> CaProcess:
    """`fleet ca serve` on 127.0.0.1, any free port (read back from its first line)."""
    server_key = shutil.copy(MOCK / "server.key", tmp / "server.key")
    os.chmod(server_key, 0o600)
    log = tmp / "fleet-ca.log"
    argv = [
        sys.executable, "-m", "fleet.cli.main", "ca", "serve", "--dir", str(tmp / "state"),
        "--host", "127.0.0.1", "--port", "0",
        "--issuing-cert", str(ca.issuing), "--issuing-key", str(ca.issuing_key), "--chain", str(ca.root),
        "--signer-cert", str(MOCK / "server.crt"), "--signer-key", str(server_key),
        "--trusted", str(MOCK / "root.crt"),  # the Mock's rootCA: signer.crt signs requests
        "--secret", PBM_SECRET,  # answers any reference: the tables' pbm_ref is empty
        # The tables enroll one key file (new.key) row after row, as their Mock allows: a test
        # artifact, not a client fault. fleet refuses key reuse by default (badCertTemplate).
        "--allow-key-reuse",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"listening on \S+ \(port (\d+)\)", log.read_text(errors="replace"))
        if match:
            return CaProcess(proc, int(match.group(1)), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_ca(CaProcess(proc, 0, log))
    raise AssertionError("fleet ca serve did not start:\n" + log.read_text(errors="replace"))


def stop_ca(ca: CaProcess) -> None:
    if ca.proc.poll() is None:
        ca.proc.send_signal(signal.SIGTERM)
        try:
            ca.proc.wait(10)
        except subprocess.TimeoutExpired:
            ca.proc.kill()
            ca.proc.wait(5)


# ---------------------------------------------------------------------------------------------
# The client side


def client_dir(tmp: Path, port: int, ca: RunCa) -> Path:
    """A writable copy of the Mock's client credentials for server section [fleet] on ``port``,
    with the CA files replaced by this run's (RUN.md, "Credential files")."""
    dest = tmp / "client"
    subprocess.run(["sh", str(TABLES / "new_server_dir.sh"), SERVER, str(port), str(dest)],
                   check=True, capture_output=True, timeout=30)
    root = ca.root.read_bytes()
    for name in ("root.crt", "signer_root.crt"):  # out_trusted of the default and [fleet] sections
        _write(dest / name, root)
    _write(dest / "big_root.crt", root + (MOCK / "big_root.crt").read_bytes())  # ours, then filler
    _write(dest / "issuing.crt", ca.issuing.read_bytes())
    _write(dest / "root_expired.crt", ca.root_expired.read_bytes())
    _write(dest / "issuing_expired.crt", ca.issuing_expired.read_bytes())
    for name in ("server.key", "signer_only.crt", "signer_issuing.crt"):  # server side only
        (dest / name).unlink(missing_ok=True)
    return dest


def read_overrides(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(aspect, "L<line>" or title) -> (expectation, reason) for our server, as the runner reads them."""
    found = {}
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = raw.split("\t")
        assert len(parts) == 5, f"overrides line needs 5 TAB-separated fields: {raw!r}"
        server, aspect, row, expected, reason = parts
        assert server in (SERVER, "*") and expected in ("0", "1", "skip"), raw
        assert reason.strip(), f"override without a reason: {raw!r}"
        found[(aspect, row)] = (expected, reason)
    return found


def test_overrides_file_is_well_formed() -> None:
    overrides = read_overrides(OVERRIDES)
    assert overrides, "tests/interop/overrides.tsv lists no rows"
    assert len(overrides) <= TOTAL_ROWS - MIN_PASSED - 2  # 2 rows are TBD/TODO upstream


def test_openssl_cmp_tables_against_fleet_ca(tmp_path: Path) -> None:
    missing = _tables_missing()
    if missing:
        pytest.skip(missing)
    overrides = read_overrides(OVERRIDES)
    ca_files = build_run_ca(tmp_path / "ca")
    ca = start_ca(tmp_path, ca_files)
    try:
        creds = client_dir(tmp_path, ca.port, ca_files)
        run = subprocess.run(
            [sys.executable, str(TABLES / "cmp_csv_runner.py"), "--config", str(creds / "test.cnf"),
             "--server", SERVER, "--overrides", str(OVERRIDES), "--result-dir", str(tmp_path / "results"),
             "--timeout", "20", "-v"],
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path, check=False,
        )
        assert ca.proc.poll() is None, "fleet ca serve died during the run:\n" + ca.log.read_text(errors="replace")
    finally:
        stop_ca(ca)
    lines = run.stdout.splitlines()
    match = SUMMARY.match(lines[-1]) if lines else None
    assert match, f"no summary from the runner (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    passed, failed, skipped = map(int, match.groups())
    failures = [line for line in lines if line.startswith("NOT OK")]
    assert failed == 0, "rows failed:\n" + "\n".join(failures) + "\nCA log tail:\n" + ca.log.read_text()[-2000:]
    assert run.returncode == 0
    assert passed + failed + skipped == TOTAL_ROWS
    assert passed >= MIN_PASSED

    # Every skip is upstream's (TBD/TODO in the CSV) or ours with a reason; every override is used.
    unexplained, used = [], set()
    for line in lines:
        if not line.startswith("skip"):
            continue
        skip = SKIP_LINE.match(line)
        assert skip, line
        aspect, row, why = skip.group(1), f"L{skip.group(2)}", skip.group(3)
        if re.fullmatch(r"expected value is '(TBD|TODO)' in CSV", why):
            continue
        if why.startswith("override: ") and (aspect, row) in overrides:
            used.add((aspect, row))
            continue
        unexplained.append(line)
    assert unexplained == [], "skips without a reason in tests/interop/overrides.tsv"
    skips = {key for key, (expected, _) in overrides.items() if expected == "skip"}
    assert used == skips, f"overrides that matched no skipped row: {skips - used}"
    print(f"\n{passed} of {TOTAL_ROWS} OpenSSL CMP test rows pass against fleet's CA "
          f"({failed} failed, {skipped} skipped)")
