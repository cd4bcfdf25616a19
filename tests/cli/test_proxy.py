"""fleet behind an HTTP proxy: a real ``tinyproxy`` started by the test on loopback, in front of
``fleet ca serve`` (plain and TLS). http:// goes in absolute form, https:// through CONNECT with
TLS end to end; proxy authentication comes from the URL; NO_PROXY bypasses; HTTPS_PROXY and
HTTP_PROXY are read from the environment, ``--proxy`` overrides them."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import DEAD, Ca, device_secret, fleet, free_port, one_error_line, running_ca
from test_cmp_tls import MASTER as TLS_MASTER
from test_cmp_tls import tls_ca  # noqa: F401 - fixture

from fleet.http.proxy import bypassed, choose_proxy
from fleet.load.child import stop_child

TINYPROXY = shutil.which("tinyproxy")
needs_tinyproxy = pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy not installed (apt-get install tinyproxy)")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Tinyproxy:
    url: str
    log: Path

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def tinyproxy(folder: Path, *, auth: tuple[str, str] | None = None) -> Iterator[Tinyproxy]:
    """tinyproxy in the foreground on a free loopback port, logging every request it relays."""
    assert TINYPROXY is not None
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "tinyproxy.log"
    for _ in range(5):
        port = free_port()
        conf = folder / "tinyproxy.conf"
        lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "Allow 127.0.0.1", f"LogFile \"{log}\"",
                 "LogLevel Info", "MaxClients 20", "DisableViaHeader Yes"]
        if auth is not None:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        raise AssertionError(f"tinyproxy did not start: {proc.stderr.read() if proc.stderr else ''}")
    try:
        yield Tinyproxy(f"http://127.0.0.1:{port}", log)
    finally:
        stop_child(proc)


def clean_env(**values: str) -> dict[str, str]:
    """Proxy variables set exactly to ``values`` (both cases), the rest of them empty."""
    env = {name: "" for var in _PROXY_VARS for name in (var, var.upper())}
    for key, value in values.items():
        env[key.lower()] = env[key.upper()] = value
    return env


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    with running_ca(tmp_path_factory.mktemp("proxy") / "ca") as authority:
        yield authority


def ir(url: str, out: Path, *extra: str, ref: str = "dev-00000001", master: str | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    secret = device_secret(ref) if master is None else device_secret(ref, master)
    return fleet("cmp", "ir", "--server", url, "--ref", ref, "--secret", f"pass:{secret}", "--subject",
                 f"/CN={out.name}", "--newkey", str(out / "key.pem"), "--certout", str(out / "cert.pem"), *extra,
                 extra_env=env)


@needs_tinyproxy
def test_http_proxy_from_the_environment_relays_in_absolute_form(ca: Ca, tmp_path: Path) -> None:
    with tinyproxy(tmp_path / "proxy") as proxy:
        result = ir(ca.url, tmp_path, env=clean_env(http_proxy=proxy.url))
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "cert.pem").exists()
        log = proxy.logged()
    # both messages of the transaction (ir, certConf) went through the proxy, in absolute form
    assert log.count(f"POST {ca.url}") >= 2 or log.count(f"POST http://127.0.0.1:{ca.port}/") >= 2, log


@needs_tinyproxy
def test_https_goes_through_connect_with_tls_to_the_ca(tls_ca: tuple[str, Path], tmp_path: Path) -> None:  # noqa: F811
    url, tls_root = tls_ca
    port = url.split(":")[2].split("/")[0]
    with tinyproxy(tmp_path / "proxy") as proxy:
        result = ir(url, tmp_path, "--tls-trusted", str(tls_root), master=TLS_MASTER,
                    env=clean_env(https_proxy=proxy.url, http_proxy=DEAD))
        assert result.returncode == 0, result.stderr
        log = proxy.logged()
    assert f"CONNECT 127.0.0.1:{port}" in log, log
    assert "POST" not in log  # the proxy saw only the tunnel, never the requests


@needs_tinyproxy
def test_ssl_cert_file_is_the_trust_store_as_for_curl(tls_ca: tuple[str, Path], tmp_path: Path) -> None:  # noqa: F811
    url, tls_root = tls_ca
    refused = ir(url, tmp_path, master=TLS_MASTER, env=clean_env())
    assert refused.returncode == 1 and "certificate verify failed" in one_error_line(refused.stderr)
    with tinyproxy(tmp_path / "proxy") as proxy:
        result = ir(url, tmp_path, "--proxy", proxy.url, master=TLS_MASTER,
                    env={**clean_env(), "SSL_CERT_FILE": str(tls_root)})
        assert result.returncode == 0, result.stderr


@needs_tinyproxy
def test_proxy_authentication_from_the_url(ca: Ca, tls_ca: tuple[str, Path], tmp_path: Path) -> None:  # noqa: F811
    url, tls_root = tls_ca
    with tinyproxy(tmp_path / "proxy", auth=("fleet", "s3cret")) as proxy:
        denied = ir(url, tmp_path, "--tls-trusted", str(tls_root), "--proxy", proxy.url, master=TLS_MASTER,
                    env=clean_env())
        line = one_error_line(denied.stderr)
        assert denied.returncode == 1 and "refused CONNECT" in line and "HTTP 407" in line, line
        authed = proxy.url.replace("http://", "http://fleet:s3cret@")
        ok = ir(url, tmp_path, "--tls-trusted", str(tls_root), "--proxy", authed, master=TLS_MASTER, env=clean_env())
        assert ok.returncode == 0, ok.stderr
        assert "s3cret" not in ok.stdout + ok.stderr + denied.stderr
        plain = ir(ca.url, tmp_path / "plain", env=clean_env(http_proxy=authed))
        assert plain.returncode == 0, plain.stderr


def test_no_proxy_bypasses_and_an_empty_proxy_option_disables(ca: Ca, tmp_path: Path) -> None:
    env = clean_env(http_proxy="http://127.0.0.1:1", no_proxy="localhost,127.0.0.1")
    assert ir(ca.url, tmp_path / "a", env=env).returncode == 0
    dead = ir(ca.url, tmp_path / "b", env=clean_env(http_proxy="http://127.0.0.1:1"))
    line = one_error_line(dead.stderr)
    assert dead.returncode == 1 and "cannot connect to proxy 127.0.0.1:1" in line, line
    assert ir(ca.url, tmp_path / "c", "--proxy", "", env=clean_env(http_proxy="http://127.0.0.1:1")).returncode == 0


def test_unreachable_proxy_stops_a_run_in_one_line() -> None:
    result = fleet("run", "profiles/smoke.toml", "--server", "http://ca.invalid/.well-known/cmp",
                   "--master-secret", "pass:x", "--proxy", "http://user:pw@127.0.0.1:1", "--quiet",
                   extra_env=clean_env())
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "cannot connect to proxy 127.0.0.1:1" in line and "pw" not in line


@pytest.mark.parametrize(("host", "port", "no_proxy", "expected"), [
    ("ca.example.com", 443, "example.com", True),
    ("ca.example.com", 443, ".example.com", True),
    ("badexample.com", 443, "example.com", False),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "10.1.2.3:8080", False),
    ("10.1.2.3", 8080, "10.1.2.3:8080", True),
    ("anything", 1, "*", True),
    ("::1", 80, "[::1]", True),
    ("ca", 80, "", False),
])
def test_no_proxy_matching(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


def test_proxy_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://u:p%40ss@proxy.corp:8080")
    monkeypatch.setenv("http_proxy", "proxy.corp")
    proxy = choose_proxy("https", "ca.example", 443, None)
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.corp", 8080)
    assert proxy.authorization == b"Basic dTpwQHNz"  # u:p@ss
    assert "p@ss" not in proxy.label
    plain = choose_proxy("http", "ca.example", 80, None)
    assert plain is not None and (plain.port, plain.authorization) == (1080, None)
    assert choose_proxy("https", "ca.example", 443, "") is None
    monkeypatch.setenv("NO_PROXY", "example")
    assert choose_proxy("https", "ca.example", 443, None) is None


@needs_tinyproxy
def test_a_load_run_goes_through_the_proxy_option(ca: Ca, tmp_path: Path) -> None:
    with tinyproxy(tmp_path / "proxy") as proxy:
        result = fleet("run", "profiles/smoke.toml", "--server", ca.url, "--master-secret", "pass:demo",
                       "--proxy", proxy.url, "--duration", "1", "--quiet", extra_env=clean_env(http_proxy=DEAD))
        log = proxy.logged()
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.count(f"POST http://127.0.0.1:{ca.port}/.well-known/cmp") >= 2 * 40 - 2, log[-2000:]
