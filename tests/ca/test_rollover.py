"""Root CA key rollover (``fleet ca rollover``, RFC 9810 §4.4, RFC 9483 §4.3.2).

The links verify as the RFC says and a client's strict check refuses each broken one; a
process killed (SIGKILL) after every step of a rollover leaves a directory that loads as the
old or the new hierarchy; a serving CA offers the update (genm rootCaCert, caKeyUpdateInfo),
pushes a ckuann and adopts the new root live in its tick. Real processes: ``fleet ca serve``,
``fleet ca rollover``, ``fleet cmp listen`` (updates its trust anchor), ``fleet cmp genm
--infotype rootCaKeyUpdate`` and OpenSSL 3.0 as a relying party and a CMP client of the new
hierarchy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from fleet_processes import start_fleet
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc9480

from fleet.ca.announcer import Announcer
from fleet.ca.authority import STORE_FILE, Authority
from fleet.ca.hierarchy import ROLLOVER_KILL_AT, CaHierarchy, HierarchyError, build_ca_cert
from fleet.ca.kga import build_kga
from fleet.ca.rollover import RolloverError, RolloverWatch, prepare, read_update
from fleet.ca.service import CaService
from fleet.ca.store import CertStore
from fleet.cmp import genm, oids
from fleet.cmp.announce import KeyUpdateAnnouncement, read_announcement
from fleet.cmp.backend import IssueRequest
from fleet.cmp.messages import BodyType, InfoTypeAndValue
from fleet.cmp.rootupdate import RootUpdateError, check_root_update
from fleet.cmp.trust import TrustStore
from fleet.load.child import free_port, stop_child


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _consistent(state: Path) -> x509.Certificate:
    """Load the state dir as a CA does; check key/cert pairs and the chain; the root."""
    h = CaHierarchy.load_or_create(state)
    h.issuing.verify_directly_issued_by(h.root)
    h.signer.verify_directly_issued_by(h.issuing)
    return h.root


def test_links_verify_and_a_strict_client_refuses_each_broken_one(tmp_path: Path) -> None:
    old = CaHierarchy.load_or_create(tmp_path / "ca").root
    update = prepare(tmp_path / "ca", switch_at=time.time() + 3600)
    assert not update.switched and _consistent(tmp_path / "ca") == old  # not due: the old root serves
    new = check_root_update(old, _der(update.new_with_new), _der(update.new_with_old), _der(update.old_with_new), at=datetime.now(UTC))
    assert new == update.new_with_new and new.subject == old.subject
    update.issuing.verify_directly_issued_by(new)
    other = CaHierarchy.load_or_create(tmp_path / "other").root  # another CA, same name
    key = ec.generate_private_key(ec.SECP256R1())
    forged_link = build_ca_cert(subject=old.subject, public_key=new.public_key(), issuer=old, issuer_key=key,
                                not_before=new.not_valid_before_utc, not_after=new.not_valid_after_utc, path_length=None)
    wrong_back = build_ca_cert(subject=old.subject, public_key=key.public_key(), issuer=new, issuer_key=key,
                               not_before=new.not_valid_before_utc, not_after=new.not_valid_after_utc, path_length=None)
    nwn, nwo, own = _der(update.new_with_new), _der(update.new_with_old), _der(update.old_with_new)
    for args, words in (
        ((other, nwn, nwo, own), "newWithOld is not signed by the old root"),
        ((old, nwn, _der(forged_link), own), "newWithOld is not signed by the old root"),
        ((old, nwn, None, own), "newWithOld is missing"),
        ((old, nwn, nwo, _der(wrong_back)), "oldWithNew does not certify the old root's key"),
        ((old, _der(old), nwo, own), "newWithOld and newWithNew certify different keys"),
        ((old, nwo, nwo, own), "newWithNew is not a self-signed CA certificate"),
    ):
        with pytest.raises(RootUpdateError, match=words):
            check_root_update(*args, at=datetime.now(UTC))  # type: ignore[arg-type]
    with pytest.raises(RolloverError, match="already pending"):
        prepare(tmp_path / "ca")
    with pytest.raises(RolloverError, match="holds no CA"):
        prepare(tmp_path / "nothing")


STEPS = ("staged", "committed", "root-key", "root-cert", "issuing-cert", "switched")


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_after_any_step_leaves_the_old_or_the_new_hierarchy(tmp_path: Path, step: str) -> None:
    """A child process rolls over and kills itself (SIGKILL) right after ``step``; the next
    load (a CA's start) finds one consistent hierarchy: the old one before the commit, the new
    one after it (a switch cut short is finished)."""
    state = tmp_path / "ca"
    old = _consistent(state)
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, just the rollover and its death
        os.environ[ROLLOVER_KILL_AT] = step
        try:
            prepare(state)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9, status
    root = _consistent(state)
    update = read_update(state)
    if step == "staged":
        assert root == old and update is None
        assert prepare(state).switched and _consistent(state) != old  # the next rollover works
    else:
        assert update is not None and update.switched and root == update.new_with_new


def _issue(authority: Authority, ref: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    authority.issue(IssueRequest(
        kind=BodyType.IR, public_key=key.public_key(),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ref)]), extensions=(), not_after=None,
        device_ref=ref, transaction_id=os.urandom(16), confirmed=True, old_cert=None, now=time.time(),
    ))


class _Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    def __call__(self, url: str, timeout: float):  # type: ignore[no-untyped-def]
        received = self.received

        class _T:
            async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None) -> object:
                received.append((url, data))
                return object()

        @asynccontextmanager
        async def opened():  # type: ignore[no-untyped-def]
            yield _T()

        return opened()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[CaService, _Recorder]]:
    state = tmp_path / "ca"
    hierarchy = CaHierarchy.load_or_create(state)
    authority = Authority(hierarchy, CertStore(state / STORE_FILE), base_url="http://127.0.0.1:9")
    recorder = _Recorder()
    announcer = Announcer(authority, "http://devices.example/{reference}", transport=recorder)
    yield CaService(authority, announcer=announcer, rollover=RolloverWatch(state, None), announce_crl=True,
                    kga=build_kga(state, hierarchy), kga_profiles=("*",)), recorder
    authority.close()


async def test_a_serving_ca_offers_announces_and_adopts_the_rollover_live(
    service: tuple[CaService, _Recorder], tmp_path: Path,
) -> None:
    ca, recorder = service
    authority = ca.authority
    state = tmp_path / "ca"
    old = authority.hierarchy.root
    for ref in ("dev-1", "dev-2"):
        _issue(authority, ref)
    ask = genm.root_ca_cert_request(_der(old))
    assert genm.decode_root_ca_key_update(authority.general_info(ask)) is None  # nothing to offer yet
    ca.tick()  # the CRL the CA starts with is not news
    update = prepare(state, switch_at=time.time() + 3600)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ca.announcer.run)  # type: ignore[union-attr]
        ca.tick()
        offered = genm.decode_root_ca_key_update(authority.general_info(ask))
        assert offered == update.genm_value() and authority.hierarchy.root == old  # offered, not active
        assert genm.decode_root_ca_key_update(authority.general_info(genm.root_ca_cert_request(
            _der(update.new_with_new)))) is None  # a device on the new root has nothing to update
        info = authority.general_info(InfoTypeAndValue(oids.IT_CA_KEY_UPDATE_INFO))
        assert info.value is not None
        # both answers decode with pyasn1-alt-modules to the RFC 9810 structures
        links, rest = decoder.decode(info.value, asn1Spec=rfc9480.CAKeyUpdAnnContent())
        assert rest == b"" and encoder.encode(links["oldWithNew"]) == _der(update.old_with_new)
        value = authority.general_info(ask).value
        assert value is not None
        content, rest = decoder.decode(value, asn1Spec=rfc9480.RootCaKeyUpdateContent())
        assert rest == b"" and encoder.encode(content["newWithNew"]) == _der(update.new_with_new)
        assert content["newWithOld"].isValue and content["oldWithNew"].isValue
        with trio.fail_after(10):
            while len(recorder.received) < 2:
                await trio.sleep(0.01)
        assert sorted(url for url, _ in recorder.received) == ["http://devices.example/dev-1",
                                                               "http://devices.example/dev-2"]
        _, ckuann = read_announcement(recorder.received[0][1], trust=TrustStore([old]), now=time.time())
        assert ckuann == KeyUpdateAnnouncement(*(_der(c) for c in (update.old_with_new, update.new_with_old,
                                                                    update.new_with_new)))
        (state / "root-update.json").write_text(  # bring the switch forward: the tick makes it
            json.dumps({"id": update.ident, "switch_at": time.time() - 1, "switched": False}))
        ca.tick()
        assert authority.hierarchy.root == update.new_with_new and authority.root == _der(update.new_with_new)
        assert authority.issued_chain == (_der(update.issuing),)
        assert ca.default.server.kga is not None and ca.default.server.kga.chain == (_der(update.issuing),)
        signer = ca.default.server.signer  # made before the switch, updated in place
        assert signer.extra_certs[-1] == _der(update.new_with_old)  # old-root devices find a path
        chain = [x509.load_der_x509_certificate(c) for c in signer.extra_certs]
        assert TrustStore([old]).verify(chain[0], chain[1:])  # a device still on the old root
        assert TrustStore([update.new_with_new]).verify(chain[0], chain[1:])  # and one on the new
        authority.revoke(next(iter(authority.store.devices().values())), None, datetime.now(UTC))
        ca.tick()  # a new CRL: crlann to the devices still valid
        with trio.fail_after(10):
            while len(recorder.received) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    msg, _ = read_announcement(recorder.received[2][1], trust=TrustStore([update.new_with_new]), now=time.time())
    assert msg.label == "crlann"


def test_a_broken_pointer_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "ca"
    CaHierarchy.load_or_create(state)
    (state / "root-update.json").write_text("{not json")
    with pytest.raises(HierarchyError, match="cannot read .*root-update.json"):
        CaHierarchy.load_or_create(state)
    shutil.rmtree(state)


# ---------------------------------------------------------------------------------------------
# Real processes


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _openssl_knows_root_updates() -> bool:
    help_text = _run(["openssl", "cmp", "-help"], Path(".")).stderr
    return "-oldwithold" in help_text


def test_rollover_reaches_a_listening_device_genm_and_openssl(tmp_path: Path) -> None:
    listen_port = free_port()
    ca, port = start_fleet(["ca", "serve", "--dir", "ca", "--port", "0", "--secret", "pass:demo",
                       "--announce-url", f"http://127.0.0.1:{listen_port}/{{reference}}"], tmp_path, "listening on")
    listener = None
    fleet = [sys.executable, "-m", "fleet.cli.main"]
    server = f"http://127.0.0.1:{port}/.well-known/cmp"
    try:
        shutil.copy(tmp_path / "ca" / "root-ca.pem", tmp_path / "old-root.pem")
        enroll = _run([*fleet, "cmp", "ir", "--server", server, "--ref", "dev-1", "--secret", "pass:demo",
                       "--subject", "/CN=dev-1", "--newkey", "d.key", "--certout", "d.pem"], tmp_path)
        assert enroll.returncode == 0, enroll.stderr
        listener, _ = start_fleet(["cmp", "listen", "--port", str(listen_port), "--trusted", "old-root.pem",
                              "--trusted-out", "new-root.pem", "--count", "1"], tmp_path, "listening for announcements")
        rolled = _run([*fleet, "ca", "rollover", "--dir", "ca"], tmp_path)
        assert rolled.returncode == 0 and "switched at" in rolled.stdout, rolled.stderr
        out, _ = listener.communicate(timeout=30)
        line = json.loads(out.strip().splitlines()[-1])
        assert line["accepted"] and line["body"] == "ckuann" and line["action"] == "trust anchor updated", line
        update = read_update(tmp_path / "ca")
        assert update is not None
        assert x509.load_pem_x509_certificate((tmp_path / "new-root.pem").read_bytes()) == update.new_with_new
        # polling instead: genm rootCaKeyUpdate with the strict check, against the old root
        polled = _run([*fleet, "cmp", "genm", "--server", server, "--ref", "dev-1", "--secret", "pass:demo",
                       "--infotype", "rootCaKeyUpdate", "--oldroot", "old-root.pem", "--newwithnew", "polled.pem"],
                      tmp_path)
        assert polled.returncode == 0 and "newWithOld verified" in polled.stdout, polled.stderr
        assert (tmp_path / "polled.pem").read_bytes() == (tmp_path / "new-root.pem").read_bytes()
        wrong = _run([*fleet, "cmp", "genm", "--server", server, "--ref", "dev-1", "--secret", "pass:demo",
                      "--infotype", "rootCaKeyUpdate", "--oldroot", "d.pem"], tmp_path)
        assert wrong.returncode == 0 and "no root update available" in wrong.stdout, wrong.stderr  # not the root
        # OpenSSL 3.0 as a relying party: the new issuing CA through newWithOld to the old root,
        # and directly under the new root
        folder = tmp_path / "ca" / "root-updates" / update.ident
        for anchor, untrusted in (("old-root.pem", folder / "newwithold.pem"), ("new-root.pem", None)):
            args = ["openssl", "verify", "-CAfile", anchor, *(["-untrusted", str(untrusted)] if untrusted else []),
                    str(tmp_path / "ca" / "issuing-ca.pem")]
            verified = _run(args, tmp_path)
            assert verified.returncode == 0, verified.stdout + verified.stderr
        # and as a CMP client of the new hierarchy: the CA adopted the switch live (in the tick
        # that pushed the ckuann), no restart
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp_path / "o.key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        ir = _run(["openssl", "cmp", "-server", f"127.0.0.1:{port}", "-path", ".well-known/cmp", "-cmd", "ir",
                   "-ref", "dev-2", "-secret", "pass:demo", "-newkey", "o.key", "-subject", "/CN=dev-2",
                   "-certout", "o.pem", "-out_trusted", "new-root.pem"], tmp_path)
        assert ir.returncode == 0, ir.stdout + ir.stderr
        issued_under = _run(["openssl", "verify", "-CAfile", "new-root.pem", "-untrusted",
                             str(tmp_path / "ca" / "issuing-ca.pem"), "o.pem"], tmp_path)
        assert issued_under.returncode == 0, issued_under.stdout + issued_under.stderr
        info = _run(["openssl", "cmp", "-server", f"127.0.0.1:{port}", "-path", ".well-known/cmp", "-cmd", "genm",
                     "-ref", "dev-2", "-secret", "pass:demo", "-infotype", "caKeyUpdateInfo"], tmp_path)
        assert info.returncode == 0 and "received GENP" in info.stdout + info.stderr, info.stderr
    finally:
        for proc in (listener, ca):
            stop_child(proc)


@pytest.mark.skipif(not _openssl_knows_root_updates(),
                    reason="openssl cmp before 3.2 has no rootCaCert infotype nor -oldwithold/-newwithnew "
                           "(this machine's 3.0 sends neither); 3.0's part is in the test above")
def test_openssl_genm_root_ca_cert_checks_the_links(tmp_path: Path) -> None:
    ca, port = start_fleet(["ca", "serve", "--dir", "ca", "--port", "0", "--secret", "pass:demo"], tmp_path, "listening on")
    try:
        shutil.copy(tmp_path / "ca" / "root-ca.pem", tmp_path / "old-root.pem")
        assert _run([sys.executable, "-m", "fleet.cli.main", "ca", "rollover", "--dir", "ca"], tmp_path).returncode == 0
        got = _run(["openssl", "cmp", "-server", f"127.0.0.1:{port}", "-path", ".well-known/cmp", "-cmd", "genm",
                    "-ref", "x", "-secret", "pass:demo", "-infotype", "rootCaCert", "-oldwithold", "old-root.pem",
                    "-newwithnew", "nwn.pem", "-trusted", "old-root.pem"], tmp_path)
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "nwn.pem").exists()
    finally:
        ca.terminate()
        ca.wait(10)
