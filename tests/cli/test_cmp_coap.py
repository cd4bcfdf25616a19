"""CMP over CoAP from the command line (issue 15): ``fleet ca serve --coap-port`` beside HTTP,
``fleet cmp ... --server coap://``; refusals are one line."""

from __future__ import annotations

import socket
from pathlib import Path

from cli_helpers import Ca, device_secret, fleet, one_error_line, running_ca, wait_for_counts
from cryptography import x509


def coap_port(ca: Ca) -> int:
    """The UDP port from the CA's "CoAP:" line (printed right after "listening on"; read without
    select: the pipe's reader may already hold it)."""
    assert ca.proc.stdout is not None
    for line in ca.output:
        if line.strip().startswith("CoAP:"):
            return int(line.rsplit("UDP port ", 1)[1].rstrip(")\n"))
    while line := ca.proc.stdout.readline():
        ca.output.append(line)
        if line.strip().startswith("CoAP:"):
            return int(line.rsplit("UDP port ", 1)[1].rstrip(")\n"))
    raise AssertionError("no CoAP line: " + "".join(ca.output))


def ir(url: str, tmp_path: Path, name: str, *extra: str) -> tuple[int, str, str]:
    ref = "dev-00000007"
    result = fleet(
        "cmp", "ir", "--server", url, "--ref", ref, "--secret", f"pass:{device_secret(ref)}",
        "--subject", f"/CN={name}", "--newkey", str(tmp_path / f"{name}.key"),
        "--certout", str(tmp_path / f"{name}.pem"), "--cacertsout", str(tmp_path / f"{name}-root.pem"),
        "--timeout", "30", *extra,
    )
    return result.returncode, result.stdout, result.stderr


def test_fleet_cmp_enrolls_over_coap_with_the_ca_serving_http_and_coap(tmp_path: Path) -> None:
    with running_ca(tmp_path / "ca", "--coap-port", "0") as ca:
        port = coap_port(ca)
        code, _, err = ir(f"coap://127.0.0.1:{port}/.well-known/cmp", tmp_path, "coap-device")
        assert code == 0, err
        code, _, err = ir(f"coap://127.0.0.1:{port}", tmp_path, "profiled", "--profile", "3gpp")
        assert code == 0, err
        code, _, err = ir(ca.url, tmp_path, "http-device")  # the same CA over HTTP meanwhile
        assert code == 0, err
        wait_for_counts(ca, {"issued": 3})
    issuing = x509.load_pem_x509_certificate((tmp_path / "ca" / "issuing-ca.pem").read_bytes())
    for name in ("coap-device", "profiled", "http-device"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={name}"
        cert.verify_directly_issued_by(issuing)
    assert (tmp_path / "coap-device.key").stat().st_mode & 0o777 == 0o600


def test_nothing_listening_and_coaps_are_one_line_each(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a UDP port nobody serves
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    code, _, err = ir(f"coap://127.0.0.1:{dead}/.well-known/cmp", tmp_path, "a")
    assert code == 1 and "nothing listens on 127.0.0.1" in one_error_line(err)
    code, _, err = ir("coaps://127.0.0.1:5684/.well-known/cmp", tmp_path, "b")
    assert code != 0 and "coaps:// (CoAP over DTLS) is not supported" in one_error_line(err)
    assert not (tmp_path / "a.pem").exists() and not (tmp_path / "b.pem").exists()


def test_a_busy_coap_port_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        state = tmp_path / "ca-state"
        result = fleet("ca", "serve", "--dir", str(state), "--port", "0", "--coap-port", str(port))
    assert result.returncode == 1
    assert f"port {port} is in use on 127.0.0.1 (choose another --coap-port" in one_error_line(result.stderr)
    assert not state.exists()
