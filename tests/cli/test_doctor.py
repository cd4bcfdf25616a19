"""``fleet doctor`` run for real against ``fleet ca serve`` on 127.0.0.1: each check's line, the
fix it prints, and the exit status (1 when a check failed)."""

from __future__ import annotations

import resource
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_helpers import DEAD, Ca, device_secret, fleet, running_ca

from fleet.cli.doctor_cmd import Report, _check_clock
from fleet.cmp import messages
from fleet.cmp.messages import BodyType, PKIConfirmContent, PKIHeader


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    with running_ca(tmp_path_factory.mktemp("doctor") / "ca") as authority:
        yield authority  # type: ignore[misc]


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


def test_without_credentials_the_ca_is_checked_to_speak_cmp(ca: Ca) -> None:
    result = fleet("doctor", "--server", ca.url)
    assert result.returncode == 0, result.stdout + result.stderr
    out = lines(result.stdout)
    assert out[0].startswith("ok    file descriptors: limit")
    assert f"ok    reachable: 127.0.0.1:{ca.port} accepts connections" in out
    assert "note  TLS: not used (http://)" in out
    assert any(line.startswith("ok    CMP: the CA answers CMP") for line in out)
    assert any(line.startswith("ok    clock: the CA's messageTime is") for line in out)
    assert out[-1] == "doctor: all checks passed" and result.stderr == ""


def test_mac_round_trip_passes_with_the_right_secret(ca: Ca) -> None:
    result = fleet("doctor", "--server", ca.url, "--ref", "dev-00000001",
                   "--secret", f"pass:{device_secret('dev-00000001')}")
    assert result.returncode == 0, result.stdout
    assert "ok    genm caCerts: 2 certificates; MAC protection of request and response verified" in lines(result.stdout)


def test_a_wrong_secret_fails_with_what_to_fix_and_is_not_printed(ca: Ca) -> None:
    result = fleet("doctor", "--server", ca.url, "--ref", "dev-00000001", "--secret", "pass:not-the-secret")
    assert result.returncode == 1
    out = lines(result.stdout)
    failed = [i for i, line in enumerate(out) if line.startswith("FAIL  genm caCerts:")]
    assert failed and "badMessageCheck" in out[failed[0]]
    assert out[failed[0] + 1] == "      fix: check --secret and --ref: the CA and fleet do not share that secret"
    assert "not-the-secret" not in result.stdout + result.stderr
    assert out[-1] == "doctor: 1 failed, 0 warnings"


def test_signature_setup_without_the_right_trust_anchor_fails(ca: Ca, tmp_path: Path) -> None:
    """A signed genm with --trusted that is not the CA's root: the CA's signature cannot be checked."""
    secret = f"pass:{device_secret('dev-00000002')}"
    enrolled = fleet("cmp", "ir", "--server", ca.url, "--ref", "dev-00000002", "--secret", secret, "--subject",
                     "/CN=doctor", "--newkey", str(tmp_path / "d.key"), "--certout", str(tmp_path / "d.pem"),
                     "--chainout", str(tmp_path / "chain.pem"), "--cacertsout", str(tmp_path / "root.pem"))
    assert enrolled.returncode == 0, enrolled.stderr
    signed = ("--cert", str(tmp_path / "d.pem"), "--key", str(tmp_path / "d.key"))
    good = fleet("doctor", "--server", ca.url, *signed, "--trusted", str(tmp_path / "root.pem"))
    assert good.returncode == 0, good.stdout
    assert any("signature protection of request and response verified" in line for line in lines(good.stdout))
    wrong = fleet("doctor", "--server", ca.url, *signed, "--trusted", str(tmp_path / "d.pem"))
    assert wrong.returncode == 1
    out = lines(wrong.stdout)
    i = next(i for i, line in enumerate(out) if line.startswith("FAIL  genm caCerts:"))
    assert out[i + 1].startswith("      fix: give --trusted with the root the CA's CMP signer chains to")


def test_unreachable_ca_and_https_on_a_plain_port(ca: Ca) -> None:
    result = fleet("doctor", "--server", DEAD)
    assert result.returncode == 1
    out = lines(result.stdout)
    assert out[1].startswith("FAIL  reachable: cannot connect to 127.0.0.1:1") and "Connection refused" in out[1]
    assert out[2].startswith("      fix: check the URL")
    tls = fleet("doctor", "--server", ca.url.replace("http://", "https://"))
    assert tls.returncode == 1
    assert "FAIL  TLS: the server does not speak TLS (use http:// ?)" in lines(tls.stdout)


def test_file_descriptor_limit_below_max_in_flight_fails_with_the_ulimit_to_set() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)  # the subprocess inherits it
    result = fleet("doctor", "--max-in-flight", str(soft + 1000))
    assert result.returncode == 1
    out = lines(result.stdout)
    assert out[0] == f"FAIL  file descriptors: limit {soft} < {soft + 1256} ({soft + 1000} in flight + 256 spare)"
    assert "ulimit -n" in out[1] or "LimitNOFILE" in out[1]
    ok = fleet("doctor", "--profile", "profiles/smoke.toml")
    assert ok.returncode == 0 and lines(ok.stdout)[0].startswith("ok    file descriptors")


@pytest.mark.parametrize(("offset", "verdict"), [(timedelta(hours=2), "FAIL"), (timedelta(seconds=-20), "ok")])
def test_clock_skew_from_the_cas_message_time(offset: timedelta, verdict: str, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    header = PKIHeader(sender=messages.NULL_DN_GENERAL_NAME, recipient=messages.NULL_DN_GENERAL_NAME,
                       transaction_id=b"\x01" * 16, sender_nonce=b"\x02" * 16, message_time=now + offset)
    data = messages.assemble(messages.encode_header(header),
                             messages.encode_body(BodyType.PKICONF, PKIConfirmContent()), None, ())
    report = Report()
    _check_clock(report, [data], now.timestamp())
    out = capsys.readouterr().out
    assert out.startswith(f"{verdict:<6}clock: the CA's messageTime is ")
    assert report.failed == (verdict == "FAIL")
    if verdict == "FAIL":
        assert "7200 s ahead of this machine" in out and "fix: synchronise the clocks (NTP)" in out
