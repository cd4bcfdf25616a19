"""Mutual TLS against ``fleet ca serve --tls-client-ca``, with real peers on loopback: fleet's own
clients (``fleet cmp``, ``doctor``, ``run``, ``provision``) and OpenSSL's (``openssl s_client``,
``openssl cmp -tls_used``). A client without a certificate, or with one from another CA, is refused
with a TLS alert and told in one line which option fixes it; ``SSL_CERT_FILE`` stands in for
``--tls-trusted`` as it does for curl; an encrypted client key opens with ``--tls-key-pass``."""

from __future__ import annotations

import ipaddress
import json
import select
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from cli_helpers import Ca, device_secret, env, fleet, free_port, one_error_line, running_ca
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet.http.client import CmpHttpClient
from fleet.http.errors import ConnectError
from fleet.tls import TlsClient, TlsError

REF = "dev-00000001"


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, ip: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           encryption))
    path.with_suffix(".key").chmod(0o600)


@dataclass
class Pki:
    folder: Path
    server: Path  # the server's self-signed certificate: also the clients' --tls-trusted
    client_ca: Path
    client: Path  # station.pem / station.key (clear) / station-locked.key (encrypted)
    rogue: Path

    def f(self, name: str) -> str:
        return str(self.folder / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("mtls")
    server_key = ec.generate_private_key(ec.SECP256R1())
    _write(d / "server", _cert("127.0.0.1", server_key, None, ca=True, ip=True), server_key)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("Station CA", ca_key, None, ca=True)
    _write(d / "client-ca", ca_cert, ca_key)
    station_key = ec.generate_private_key(ec.SECP256R1())
    station = _cert("station-1", station_key, (ca_cert.subject, ca_key))
    _write(d / "station", station, station_key)
    _write(d / "station-locked", station, station_key, b"station-pw")
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    _write(d / "rogue", _cert("rogue", rogue_key, None), rogue_key)
    return Pki(d, d / "server.pem", d / "client-ca.pem", d / "station.pem", d / "rogue.pem")


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def ca(pki: Pki, metrics_port: int) -> Iterator[Ca]:
    with running_ca(pki.folder / "state", "--tls-cert", pki.f("server.pem"), "--tls-key", pki.f("server.key"),
                    "--tls-client-ca", pki.f("client-ca.pem"), "--metrics-port", str(metrics_port)) as authority:
        yield authority


def tls_failures(metrics_port: int, wanted: float | None = None) -> float:
    """fleet_ca_http_tls_failures_total from the CA's /metrics, sampled once a second: polled
    (up to 5 s) until it shows up, or reaches ``wanted``."""
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found = [float(line.split()[1]) for line in text.splitlines() if line.startswith("fleet_ca_http_tls_failures_total")]
        if (found and (wanted is None or found[0] >= wanted)) or time.monotonic() > deadline:
            return found[0] if found else -1.0
        time.sleep(0.2)


def url(ca: Ca) -> str:
    return f"https://127.0.0.1:{ca.port}/.well-known/cmp"


def ir(ca: Ca, out: Path, *tls: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return fleet("cmp", "ir", "--server", url(ca), "--ref", REF, "--secret", f"pass:{device_secret(REF)}",
                 "--subject", "/CN=mtls-device", "--certout", str(out), *tls, extra_env=env)


def test_fleet_cmp_with_a_client_certificate(ca: Ca, pki: Pki, tmp_path: Path) -> None:
    """An encrypted key opens with --tls-key-pass; SSL_CERT_FILE replaces --tls-trusted, and a
    passphrase given for a clear key is accepted, as with curl and openssl."""
    locked = ir(ca, tmp_path / "a.pem", "--tls-trusted", str(pki.server), "--tls-cert", str(pki.client),
                "--tls-key", pki.f("station-locked.key"), "--tls-key-pass", "env:STATION_PW",
                env={"STATION_PW": "station-pw"})
    assert locked.returncode == 0 and locked.stdout.startswith("ir: accepted"), locked.stderr
    clear = ir(ca, tmp_path / "b.pem", "--tls-cert", str(pki.client), "--tls-key", pki.f("station.key"),
               "--tls-key-pass", "pass:not-needed", env={"SSL_CERT_FILE": str(pki.server)})
    assert clear.returncode == 0, clear.stderr
    assert x509.load_pem_x509_certificate((tmp_path / "b.pem").read_bytes()).subject.rfc4514_string() == "CN=mtls-device"


def test_a_missing_or_foreign_client_certificate_is_one_line_naming_the_fix(ca: Ca, pki: Pki, tmp_path: Path,
                                                                          metrics_port: int) -> None:
    """... and the CA counts each refused handshake (fleet_ca_http_tls_failures_total)."""
    trusted = ("--tls-trusted", str(pki.server))
    before = tls_failures(metrics_port)
    missing = ir(ca, tmp_path / "a.pem", *trusted)
    assert missing.returncode == 1
    assert one_error_line(missing.stderr).endswith(
        "the server requires a client certificate (TLS alert certificate required): give --tls-cert and --tls-key")
    foreign = ir(ca, tmp_path / "b.pem", *trusted, "--tls-cert", str(pki.rogue), "--tls-key", pki.f("rogue.key"))
    assert foreign.returncode == 1
    assert "the server refused the client certificate (TLS alert unknown ca)" in one_error_line(foreign.stderr)
    assert not any((tmp_path / n).exists() for n in ("a.pem", "b.pem"))
    assert tls_failures(metrics_port, before + 2) >= before + 2  # sampled once a second: never stale low


def test_unusable_client_credentials_are_named_before_anything_is_sent(pki: Pki) -> None:
    locked = TlsClient(pki.server, pki.client, pki.folder / "station-locked.key")
    with pytest.raises(TlsError, match=r"--tls-key: key file .* is encrypted: give its passphrase \(give --tls-key-pass\)"):
        locked.context()
    with pytest.raises(TlsError, match="passphrase is wrong") as wrong:
        TlsClient(pki.server, pki.client, pki.folder / "station-locked.key", b"not-it").context()
    assert "not-it" not in str(wrong.value)
    with pytest.raises(TlsError, match=r"--tls-key '.*rogue.key' is not the key of --tls-cert '.*station.pem'"):
        TlsClient(pki.server, pki.client, pki.folder / "rogue.key").context()
    with pytest.raises(TlsError, match="--tls-cert and --tls-key go together"):
        TlsClient(pki.server, pki.client)


def _s_client(ca: Ca, pki: Pki, *extra: str) -> str:
    request = b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{ca.port}", "-CAfile", str(pki.server), "-verify_return_error",
         "-ign_eof", *extra], input=request, capture_output=True, timeout=20, check=False)
    return (result.stdout + result.stderr).decode(errors="replace")


def test_openssl_s_client_receives_the_alert_or_the_answer(ca: Ca, pki: Pki) -> None:
    refused = _s_client(ca, pki)
    assert "alert certificate required" in refused and "HTTP/1.1" not in refused
    accepted = _s_client(ca, pki, "-cert", str(pki.client), "-key", pki.f("station.key"))
    assert "HTTP/1.1 204 No Content" in accepted and "Allow: GET, POST, OPTIONS" in accepted, accepted


def test_openssl_cmp_over_mutual_tls(ca: Ca, pki: Pki, tmp_path: Path) -> None:
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                    str(tmp_path / "new.key")], check=True, capture_output=True)
    common = ["openssl", "cmp", "-config", "", "-server", f"127.0.0.1:{ca.port}", "-path", "/.well-known/cmp",
              "-tls_used", "-tls_trusted", str(pki.server), "-ref", REF, "-secret", f"pass:{device_secret(REF)}",
              "-recipient", "/CN=fleet CA", "-cmd", "ir", "-newkey", str(tmp_path / "new.key"),
              "-subject", "/CN=openssl-mtls", "-certout", str(tmp_path / "c.pem")]
    ok = subprocess.run([*common, "-tls_cert", str(pki.client), "-tls_key", pki.f("station-locked.key"),
                         "-tls_keypass", "pass:station-pw"], capture_output=True, text=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes()).subject.rfc4514_string() == "CN=openssl-mtls"
    refused = subprocess.run(common, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0 and "certificate required" in refused.stdout + refused.stderr


def test_doctor_checks_the_client_certificate(ca: Ca, pki: Pki) -> None:
    base = ("doctor", "--server", url(ca), "--tls-trusted", str(pki.server))
    good = fleet(*base, "--tls-cert", str(pki.client), "--tls-key", pki.f("station.key"))
    assert "ok    TLS: handshake verified with --tls-trusted; client certificate accepted" in good.stdout, good.stdout
    assert good.returncode == 0
    bad = fleet(*base)
    assert bad.returncode == 1
    out = bad.stdout.splitlines()
    failed = next(i for i, line in enumerate(out) if line.startswith("FAIL  TLS:"))
    assert "requires a client certificate" in out[failed]
    assert out[failed + 1].startswith("      fix: give --tls-cert and --tls-key with a client certificate")


def test_run_and_provision_present_the_client_certificate(ca: Ca, pki: Pki, tmp_path: Path) -> None:
    tls = ("--tls-trusted", str(pki.server), "--tls-cert", str(pki.client), "--tls-key", pki.f("station-locked.key"),
           "--tls-key-pass", "pass:station-pw")
    refused = fleet("run", "profiles/smoke.toml", "--server", url(ca), "--master-secret", "pass:demo", "--quiet",
                    "--tls-trusted", str(pki.server))
    assert refused.returncode == 1
    assert one_error_line(refused.stderr).startswith("fleet: error: CA unreachable, nothing sent: ")
    assert "requires a client certificate" in refused.stderr
    report = tmp_path / "run.json"
    run = fleet("run", "profiles/smoke.toml", "--server", url(ca), "--master-secret", "pass:demo", "--quiet",
                "--duration", "1", "--rate", "10", "--report", str(report), *tls)
    assert run.returncode == 0, run.stdout + run.stderr
    counts = json.loads(report.read_text())
    assert "ir" in json.dumps(counts) and "connect" not in run.stdout
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,subject,ref,secret\nst-1,/CN=st-1,{REF},pass:{device_secret(REF)}\n")
    provisioned = fleet("provision", str(manifest), "--server", url(ca), "--out", str(tmp_path / "out"),
                        "--no-progress", *tls)
    assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
    assert (tmp_path / "out" / "st-1" / "cert.pem").exists()


def test_capacity_and_its_local_shards_present_the_client_certificate(ca: Ca, pki: Pki, tmp_path: Path) -> None:
    """fleet capacity hands its --tls-* (the key's passphrase by environment, never on a command
    line) to the followers that play each step; without a client certificate it stops in one line."""
    profile = tmp_path / "p.toml"
    profile.write_text(Path("profiles/smoke.toml").read_text())
    search = ("capacity", str(profile), "--server", url(ca), "--master-secret", "pass:demo", "--min-rate", "20",
              "--max-rate", "20", "--step-duration", "3", "--warmup", "1", "--require", "20")
    refused = fleet(*search, "--tls-trusted", str(pki.server), timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "requires a client certificate" in one_error_line(refused.stderr)
    report = tmp_path / "capacity.json"
    found = fleet(*search, "--shards", "2", "--report", str(report), "--tls-trusted", str(pki.server), "--tls-cert",
                  str(pki.client), "--tls-key", pki.f("station-locked.key"), "--tls-key-pass", "pass:station-pw",
                  timeout=180)
    assert found.returncode == 0, found.stdout + found.stderr
    assert found.stdout.strip().splitlines()[-1] == "required 20/s: MET"
    step = json.loads(report.read_text())["steps"][0]
    assert step["assessment"]["passed"] and "station-pw" not in report.read_text()


def test_an_ra_between_mutual_tls_on_both_legs(ca: Ca, pki: Pki, tmp_path: Path) -> None:
    """fleet ra serve requires device client certificates (--tls-client-ca) and shows its own to
    the CA (--upstream-tls-cert, an encrypted key): a MAC-protected ir passes through both legs."""
    args = ["ra", "serve", "--upstream", url(ca), "--port", "0", "--cert", str(pki.rogue), "--key", pki.f("rogue.key"),
            "--master-secret", "pass:demo", "--tls-cert", pki.f("server.pem"), "--tls-key", pki.f("server.key"),
            "--tls-client-ca", pki.f("client-ca.pem"), "--upstream-tls-trusted", str(pki.server),
            "--upstream-tls-cert", str(pki.client), "--upstream-tls-key", pki.f("station-locked.key"),
            "--upstream-tls-key-pass", "pass:station-pw"]
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, env=env())
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert "fleet RA listening on https://" in line, line
        ra_url = f"https://127.0.0.1:{line.rsplit('(port ', 1)[1].split(')')[0]}/.well-known/cmp"
        base = ("cmp", "ir", "--server", ra_url, "--ref", REF, "--secret", f"pass:{device_secret(REF)}",
                "--subject", "/CN=via-ra", "--tls-trusted", str(pki.server))
        passed = fleet(*base, "--certout", str(tmp_path / "c.pem"), "--tls-cert", str(pki.client),
                       "--tls-key", pki.f("station.key"))
        assert passed.returncode == 0 and passed.stdout.startswith("ir: accepted"), passed.stderr
        refused = fleet(*base, "--certout", str(tmp_path / "d.pem"))
        assert refused.returncode == 1 and "requires a client certificate" in one_error_line(refused.stderr)
    finally:
        proc.terminate()
        proc.wait(10)


def test_under_tls_1_2_the_refusal_comes_in_the_handshake(ca: Ca, pki: Pki) -> None:
    """A TLS 1.2 server refuses a missing client certificate with handshake_failure, inside the
    handshake: the probe names the likely fix too."""
    context = ssl.create_default_context(cafile=str(pki.server))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConnectError, match=r"alert handshake failure\): it may require a client certificate"):
        trio.run(CmpHttpClient(url(ca), ssl_context=context).probe)
    context.load_cert_chain(pki.client, pki.f("station.key"))
    trio.run(CmpHttpClient(url(ca), ssl_context=context).probe)
