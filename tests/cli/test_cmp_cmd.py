"""``fleet cmp``: usage errors in-process through the real ``main()`` (one line, exit 1 or 2, no
traceback, no secret), and whole transactions as subprocesses against OpenSSL's mock CA."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_error_line
from cryptography import x509
from openssl_peer import OpenSSLMockServer, TestPki

from fleet.cli import main as main_module
from fleet.cli.main import main

SECRET = "Sup3r-S3cret-value"  # must never be printed, whatever happens
DEAD = "http://127.0.0.1:1/pkix/"  # loopback port 1: nothing listens, connect is refused at once


def fleet_inprocess(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``fleet cmp <args>`` through ``main()``; any exception that is not turned into an exit
    status escapes and fails the test, which is the point."""
    if not main_module.app.registered_groups:
        main_module._register()
    # main() registers the command groups on every call; once is enough in one process.
    monkeypatch.setattr(main_module, "_register", lambda *_: None)
    monkeypatch.setattr(sys, "argv", ["fleet", "cmp", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def fleet_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "cmp", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, **(env or {})},
    )


def pki_args(pki: TestPki) -> dict[str, str]:
    return {
        "crt": str(pki.client_crt), "key": str(pki.client_key), "root": str(pki.root_crt),
        "csr": str(pki.new_csr), "rsp": str(pki.rsp_crt), "new": str(pki.new_key),
    }


MAC = ["--secret", f"pass:{SECRET}", "--ref", "1234"]

# (name, args) where {crt} etc. come from the test PKI; every one must fail with exit 1 and
# exactly one line "fleet: error: <problem>" that contains the expected words.
FLEET_ERRORS = [
    ("no protection", ["ir", "--server", DEAD, "--subject", "/CN=x"], "give --secret"),
    ("no subject", ["ir", "--server", DEAD, *MAC], "--subject and/or --sans"),
    ("cert without key", ["ir", "--server", DEAD, "--subject", "/CN=x", "--cert", "{crt}"], "both --cert and --key"),
    ("signature without trust", ["cr", "--server", DEAD, "--subject", "/CN=x", "--cert", "{crt}", "--key", "{key}"], "--trusted"),
    ("bad mode", ["ir", "--server", DEAD, "--subject", "/CN=x", *MAC, "--mode", "cmp2000"], "--mode"),
    ("secret without source", ["ir", "--server", DEAD, "--subject", "/CN=x", "--secret", SECRET], "pass:TEXT"),
    ("secret from unset env", ["ir", "--server", DEAD, "--subject", "/CN=x", "--secret", "env:FLEET_TEST_UNSET_VAR"], "FLEET_TEST_UNSET_VAR"),
    ("secret file missing", ["ir", "--server", DEAD, "--subject", "/CN=x", "--secret", "file:/nonexistent/secret"], "/nonexistent/secret"),
    ("kur without cert", ["kur", "--server", DEAD, *MAC], "--cert and --key"),
    ("bad revreason", ["rr", "--server", DEAD, *MAC, "--oldcert", "{rsp}", "--revreason", "sneaky"], "--revreason"),
    ("revreason 7", ["rr", "--server", DEAD, *MAC, "--oldcert", "{rsp}", "--revreason", "7"], "not a CRLReason"),
    ("bad infotype", ["genm", "--server", DEAD, *MAC, "--infotype", "everything"], "--infotype"),
    ("crl without issuer", ["genm", "--server", DEAD, *MAC, "--infotype", "crlStatusList"], "--crl-issuer"),
    ("bad url", ["ir", "--server", "ftp://127.0.0.1/", "--subject", "/CN=x", *MAC], "http:// or https://"),
    ("missing csr", ["p10cr", "--server", DEAD, *MAC, "--csr", "/nonexistent.csr"], "/nonexistent.csr"),
    ("csr is not a csr", ["p10cr", "--server", DEAD, *MAC, "--csr", "{crt}"], "PKCS#10"),
    ("key is not a key", ["cr", "--server", DEAD, "--subject", "/CN=x", "--cert", "{crt}", "--key", "{crt}", "--trusted", "{root}"], "private key"),
    ("bad newkey type", ["ir", "--server", DEAD, *MAC, "--subject", "/CN=x", "--newkey-type", "ec:P-999"], "ec:P-999"),
    ("bad subject", ["ir", "--server", DEAD, *MAC, "--subject", "/XX=1"], "XX=1"),
    ("bad san", ["ir", "--server", DEAD, *MAC, "--sans", "IP:999.1.1.1"], "999.1.1.1"),
    ("connection refused", ["ir", "--server", DEAD, *MAC, "--subject", "/CN=x", "--newkey", "{new}"], "cannot connect"),
    ("sender with a signature", ["cr", "--server", DEAD, "--subject", "/CN=x", "--cert", "{crt}", "--key", "{key}",
                                 "--trusted", "{root}", "--sender", "/CN=y"], "--sender is for MAC protection"),
    ("bad sender", ["ir", "--server", DEAD, *MAC, "--subject", "/CN=x", "--sender", "/XX=1"], "XX=1"),
    ("bad sender, genm", ["genm", "--server", DEAD, *MAC, "--sender", "CN"], "cannot parse name"),
    ("ref not hex", ["genm", "--server", DEAD, "--secret", f"pass:{SECRET}", "--ref", "hex:0g"], "--ref"),
]


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in FLEET_ERRORS], ids=[c[0] for c in FLEET_ERRORS])
def test_fleet_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], test_pki: TestPki, args: list[str], words: str
) -> None:
    paths = pki_args(test_pki)
    code, out, err = fleet_inprocess(monkeypatch, capsys, *(a.format(**paths) for a in args))
    assert code == 1, err
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet: error: "), err
    assert words.lower() in lines[0].lower()
    assert SECRET not in err


CLICK_ERRORS = [
    ("missing server", ["ir", "--subject", "/CN=x"], "--server"),
    ("unknown option", ["ir", "--server", DEAD, "--bogus"], "--bogus"),
    ("timeout not a number", ["ir", "--server", DEAD, "--timeout", "soon"], "--timeout"),
    ("unknown command", ["enroll"], "enroll"),
    ("p10cr without csr", ["p10cr", "--server", DEAD, *MAC], "--csr"),
    ("max-iterations zero", ["genm", "--server", DEAD, *MAC, "--max-iterations", "0"], "--max-iterations"),
]


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in CLICK_ERRORS], ids=[c[0] for c in CLICK_ERRORS])
def test_option_errors_name_the_problem_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    """Option parse errors: exit 2 and exactly one line naming the problem and where help is."""
    code, out, err = fleet_inprocess(monkeypatch, capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet: usage error: "), err
    assert words in lines[0] and "--help" in lines[0], err
    assert SECRET not in out + err


def test_timeout_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], test_pki: TestPki) -> None:
    """A server that accepts and never answers: the --timeout ends it with one line."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        code, _out, err = fleet_inprocess(
            monkeypatch, capsys, "ir", "--server", url, *MAC, "--subject", "/CN=x",
            "--newkey", str(test_pki.new_key), "--timeout", "0.3",
        )
    assert code == 1 and len(err.splitlines()) == 1 and "0.3 s" in err, err
    assert SECRET not in err


# ---------------------------------------------------------------------------------------------
# Whole transactions against OpenSSL's mock CA, through the installed entry point


def test_ir_writes_certificate_and_ca_pubs(openssl_mock, test_pki: TestPki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: OpenSSLMockServer = openssl_mock()
    certout, capubs = tmp_path / "out.pem", tmp_path / "capubs.pem"
    result = fleet_subprocess(
        "ir", "--server", server.url, "--ref", "1234", "--secret", "env:FLEET_TEST_SECRET",
        "--newkey", str(test_pki.new_key), "--subject", "/CN=Enrolled Device",
        "--certout", str(certout), "--cacertsout", str(capubs),
        env={"FLEET_TEST_SECRET": test_pki.secret},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ir: accepted, serial ") and result.stderr == ""
    issued = x509.load_pem_x509_certificate(certout.read_bytes())
    assert issued == x509.load_pem_x509_certificate(test_pki.rsp_crt.read_bytes())
    assert x509.load_pem_x509_certificates(capubs.read_bytes()) == [
        x509.load_pem_x509_certificate(test_pki.root_crt.read_bytes())
    ]
    assert test_pki.secret not in result.stdout + result.stderr


def test_generated_newkey_is_0600_and_wrong_key_fails_cleanly(openssl_mock, test_pki: TestPki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--newkey that does not exist is generated and saved 0600 before the transaction. The mock
    certifies its own fixed key instead, which fleet refuses: exit 1, one line, no certout."""
    server: OpenSSLMockServer = openssl_mock()
    newkey, certout = tmp_path / "device.key", tmp_path / "device.pem"
    result = fleet_subprocess(
        "ir", "--server", server.url, "--ref", "1234", "--secret", f"pass:{test_pki.secret}",
        "--newkey", str(newkey), "--newkey-type", "ec:P-256", "--subject", "/CN=Generated",
        "--certout", str(certout),
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["fleet: error: issued certificate is for a different public key"]
    assert "Traceback" not in result.stderr and test_pki.secret not in result.stdout + result.stderr
    assert stat.S_IMODE(newkey.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in newkey.read_bytes()
    assert not certout.exists()


def test_p10cr_and_rr_with_signatures(openssl_mock, test_pki: TestPki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: OpenSSLMockServer = openssl_mock(rsp_capubs=None)
    certout, chain = tmp_path / "p10.pem", tmp_path / "chain.pem"
    sig = ["--cert", str(test_pki.client_crt), "--key", str(test_pki.client_key), "--trusted", str(test_pki.root_crt)]
    result = fleet_subprocess(
        "p10cr", "--server", server.url, *sig, "--csr", str(test_pki.new_csr), "--certout", str(certout),
        "--chainout", str(chain),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("p10cr: accepted")
    assert certout.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")

    result = fleet_subprocess(
        "rr", "--server", server.url, "--cert", str(test_pki.rsp_crt), "--key", str(test_pki.new_key),
        "--trusted", str(test_pki.root_crt), "--oldcert", str(test_pki.rsp_crt), "--revreason", "keyCompromise",
    )
    assert result.returncode == 0, result.stderr
    serial = x509.load_pem_x509_certificate(test_pki.rsp_crt.read_bytes()).serial_number
    assert result.stdout.strip() == f"rr: accepted, serial {serial:#x} revoked"


def test_genm_and_server_rejection(openssl_mock, test_pki: TestPki) -> None:  # type: ignore[no-untyped-def]
    server: OpenSSLMockServer = openssl_mock()
    result = fleet_subprocess(
        "genm", "--server", server.url, "--ref", "1234", "--secret", f"pass:{test_pki.secret}",
        "--infotype", "signKeyPairTypes",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("genp: signKeyPairTypes")

    server = openssl_mock(pkistatus=2, failure=2)
    result = fleet_subprocess(
        "cr", "--server", server.url, "--ref", "1234", "--secret", f"pass:{test_pki.secret}",
        "--newkey", str(test_pki.new_key), "--subject", "/CN=x",
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("fleet: error: cp: request rejected") and "badRequest" in line
    assert test_pki.secret not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# One options object for the six commands; the header defaults a strict server needs


def test_every_command_lists_the_shared_options_and_keeps_its_own() -> None:
    """``CmpOptions`` gives every command the shared options (rr and genm without the ones they
    cannot use); each command's own options follow --server."""
    from typer.main import get_command

    from fleet.cli import cmp_cmd

    group = get_command(cmp_cmd.app)
    shared = {f.name for f in cmp_cmd.dataclasses.fields(cmp_cmd.CmpOptions)}
    enroll = {"newkey", "newkey_type", "newkeypass", "subject", "sans", "centralkeygen", "newkeyout"}
    own = {"ir": enroll, "cr": enroll, "kur": {"oldcert", *enroll}, "p10cr": {"csr"},
           "rr": {"oldcert", "revreason"}, "genm": {"infotype", "oldroot", "crl_issuer", "newwithnew", "crlout"}}
    omitted = {"rr": {"implicit_confirm", "certout", "chainout", "cacertsout"}, "genm": {"implicit_confirm", "certout", "chainout"}}
    transactions = {n: c for n, c in group.commands.items() if n != "listen"}  # type: ignore[attr-defined]
    assert set(transactions) == set(own)  # the six; listen receives announcements, it sends no request
    for name, command in transactions.items():
        params = [p.name for p in command.params]
        assert set(params) == (shared - omitted.get(name, set())) | own[name], name
        assert params[0] == "server" and set(params[1:1 + len(own[name])]) == own[name], name


def test_rr_help_says_the_reason_defaults_to_unspecified() -> None:
    result = fleet_subprocess("rr", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "unspecified unless given" in text and "[default: unspecified]" in text


class _PbMac1Ca:
    """A CA (``CaStub``) on loopback that protects its MAC answers with PBMAC1 and ``count``
    iterations: how a server with a high iteration count answers fleet."""

    def __init__(self, count: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cmp.ca_stub import CaStub

        from fleet.cmp import messages
        from fleet.cmp.protection import MacProtector

        stub = self.stub = CaStub(secret=SECRET.encode())
        protector = MacProtector(stub.secret, pbmac1=True, iterations=count)

        def answer(data: bytes) -> bytes:
            request = messages.decode(data)
            stub.received.append(request)
            reply = stub.reply_to(request)
            header = dataclasses.replace(reply.header, protection_alg=protector.algorithm, sender_kid=stub.reference)
            header_der = messages.encode_header(header)
            body_der = messages.encode_body(reply.body_type, reply.body)
            protection = protector.protect(messages.protected_part(header_der, body_der))
            return messages.assemble(header_der, body_der, protection, reply.extra_certs)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = answer(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/pkixcmp")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_pbmac1_answer_with_262144_iterations_is_accepted_and_a_lower_cap_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """By default fleet cmp takes the count the independent CA chose; --max-iterations below it
    refuses the answer in one line that names --max-iterations, and writes nothing."""
    ca = _PbMac1Ca(262_144)
    try:
        args = ["genm", "--server", ca.url, "--ref", "CN=fleet-test", "--secret", f"pass:{SECRET}", "--pbmac1",
                "--infotype", "caCerts", "--cacertsout"]
        code, out, err = fleet_inprocess(monkeypatch, capsys, *args, str(tmp_path / "cas.pem"))
        assert code == 0, err
        assert out.startswith("genp: caCerts: 1 certificates") and (tmp_path / "cas.pem").exists()
        code, out, err = fleet_inprocess(monkeypatch, capsys, *args, str(tmp_path / "none.pem"), "--max-iterations", "100000")
        assert code == 1 and out == ""
        line = one_error_line(err)
        assert "PBMAC1 iteration count 262144 is outside 1..100000" in line and "--max-iterations" in line
        assert not (tmp_path / "none.pem").exists() and SECRET not in err
    finally:
        ca.close()
