"""Device keys in a PKCS#11 token: Debian's SoftHSM2, a token initialised by the test in a
temporary folder (SOFTHSM2_CONF), ``fleet provision`` and ``fleet cmp`` run for real against
``fleet ca serve``. Keys are made in the token, non-extractable; POP and protection are signed
there; the certificate goes back into the token and to --out; a run killed with SIGKILL after
making keys reuses them on the rerun (one key object per device, never two)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from provision_helpers import CaProcess, mac_manifest, provision_argv, secret_for
from recording_proxy import recording_proxy

from fleet.cmp import der, messages, oids
from fleet.cmp.messages import BodyType

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 not installed (pip install 'fleet[hsm]')")

MODULE = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
               if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(MODULE is None or shutil.which("softhsm2-util") is None,
                                reason="SoftHSM2 not installed (apt-get install softhsm2)")
PIN = "4321"


@dataclass
class SoftHsm:
    env: dict[str, str]
    label: str = "fleet-test"

    def args(self) -> list[str]:
        return ["--pkcs11-module", str(MODULE), "--pkcs11-token", self.label, "--pkcs11-pin", "env:FLEET_TEST_PIN"]

    def objects(self) -> dict[str, list[dict[str, object]]]:
        """{label: [{class, extractable, sensitive, value or spki}]} read straight from the token,
        by a fresh process: a PKCS#11 module reads SOFTHSM2_CONF once per process."""
        out = subprocess.run([sys.executable, "-c", _READ_TOKEN, str(MODULE), self.label, PIN], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        found: dict[str, list[dict[str, object]]] = {}
        for label, entry in json.loads(out):
            entry["class"] = pkcs11.ObjectClass[entry["class"]]
            for name in ("spki", "value"):
                if name in entry:
                    entry[name] = bytes.fromhex(entry[name])
            found.setdefault(label, []).append(entry)
        return found


_READ_TOKEN = """
import json, sys
import pkcs11
from pkcs11.util.ec import encode_ec_public_key
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
module, label, pin = sys.argv[1:]
a, C = pkcs11.Attribute, pkcs11.ObjectClass
rows = []
with pkcs11.lib(module).get_token(token_label=label).open(user_pin=pin) as session:
    for obj in session.get_objects({}):
        entry = {"class": obj.object_class.name}
        if obj.object_class == C.PRIVATE_KEY:
            entry.update(extractable=obj[a.EXTRACTABLE], sensitive=obj[a.SENSITIVE])
        elif obj.object_class == C.PUBLIC_KEY and obj.key_type == pkcs11.KeyType.RSA:
            numbers = rsa.RSAPublicNumbers(int.from_bytes(obj[a.PUBLIC_EXPONENT], "big"),
                                           int.from_bytes(obj[a.MODULUS], "big"))
            entry["spki"] = numbers.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo).hex()
        elif obj.object_class == C.PUBLIC_KEY:
            entry["spki"] = encode_ec_public_key(obj).hex()
        elif obj.object_class == C.CERTIFICATE:
            entry["value"] = bytes(obj[a.VALUE]).hex()
        rows.append((obj[a.LABEL], entry))
print(json.dumps(rows))
"""


@pytest.fixture
def hsm(tmp_path: Path) -> Iterator[SoftHsm]:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "FLEET_TEST_PIN": PIN}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "fleet-test", "--pin", PIN,
                    "--so-pin", "876543"], check=True, capture_output=True, env=env, timeout=30)
    yield SoftHsm(env)


def provision(hsm: SoftHsm, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(provision_argv(*args, *hsm.args()), capture_output=True, text=True, timeout=timeout,
                          env=hsm.env, stdin=subprocess.DEVNULL, check=False)


def check_device(hsm: SoftHsm, objects: dict[str, list[dict[str, object]]], out: Path, device: str) -> None:
    """One key pair and one certificate in the token for ``device``; the key never readable;
    cert.pem is the token's certificate and certifies the token's key; no key file."""
    entries = objects[device]
    classes = sorted(e["class"] for e in entries)
    assert classes == sorted([pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.ObjectClass.PUBLIC_KEY,
                              pkcs11.ObjectClass.CERTIFICATE]), entries
    private = next(e for e in entries if e["class"] == pkcs11.ObjectClass.PRIVATE_KEY)
    assert private["extractable"] is False and private["sensitive"] is True
    cert = x509.load_pem_x509_certificate((out / device / "cert.pem").read_bytes())
    token_cert = next(e for e in entries if e["class"] == pkcs11.ObjectClass.CERTIFICATE)["value"]
    assert token_cert == cert.public_bytes(Encoding.DER)
    spki = next(e for e in entries if e["class"] == pkcs11.ObjectClass.PUBLIC_KEY)["spki"]
    assert cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki
    assert not (out / device / "key.pem").exists() and not (out / device / "device.p12").exists()


def test_provision_keeps_device_keys_in_the_token(hsm: SoftHsm, tmp_path: Path) -> None:
    ca = CaProcess(tmp_path)
    try:
        manifest = tmp_path / "m.csv"
        ids = mac_manifest(manifest, 3)
        out = tmp_path / "issued"
        result = provision(hsm, str(manifest), "--server", ca.url, "--out", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
        assert PIN not in result.stdout + result.stderr
        objects = hsm.objects()
        for device in ids:
            check_device(hsm, objects, out, device)
        again = provision(hsm, str(manifest), "--server", ca.url, "--out", str(out))  # all done: nothing new
        assert again.returncode == 0, again.stderr
        assert hsm.objects() == objects
    finally:
        ca.stop()


def test_kill_9_after_the_keys_are_made_reuses_them(hsm: SoftHsm, tmp_path: Path) -> None:
    """The CA holds every answer for 60 s: the run makes each device's key in the token, sends its
    ir and is killed. The rerun (the same CA state, no latency, the same port) enrolls every
    device with the key made before the kill: one key object per device."""
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 4)
    out = tmp_path / "issued"
    (tmp_path / "slow").mkdir()
    slow = CaProcess(tmp_path / "slow", "--latency", "fixed:60")
    try:
        proc = subprocess.Popen(provision_argv(str(manifest), "--server", slow.url, "--out", str(out),
                                               "--concurrency", "4", *hsm.args()),
                                env=hsm.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        # Every device's key is made before its ir is sent, within a second of the start; the
        # token is not read meanwhile (one writer at a time keeps SoftHSM's file store simple).
        time.sleep(8.0)
        assert proc.poll() is None, "fleet provision ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        objects = hsm.objects()
        before = {d: next(e["spki"] for e in objects[d] if e["class"] == pkcs11.ObjectClass.PUBLIC_KEY) for d in ids}
        assert all(len(objects[d]) == 2 for d in ids), objects  # a key pair each, no certificate yet
        assert not any((out / d / "cert.pem").exists() for d in ids)  # nothing issued yet
        port = slow.port
    finally:
        slow.stop()
    shutil.copytree(tmp_path / "slow" / "ca", tmp_path / "fast" / "ca")
    fast = CaProcess(tmp_path / "fast", "--port", str(port))
    try:
        result = provision(hsm, str(manifest), "--server", fast.url, "--out", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
        objects = hsm.objects()
        for device in ids:
            check_device(hsm, objects, out, device)  # exactly one key pair each
            spki = next(e["spki"] for e in objects[device] if e["class"] == pkcs11.ObjectClass.PUBLIC_KEY)
            assert spki == before[device]  # the key made before the kill
    finally:
        fast.stop()


def test_p12_and_key_pass_are_refused_with_a_token(hsm: SoftHsm, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 1)
    result = provision(hsm, str(manifest), "--server", "http://127.0.0.1:9/", "--out", str(tmp_path / "o"), "--p12")
    assert result.returncode == 1 and "never leave it" in result.stderr.strip().splitlines()[-1]
    wrong = subprocess.run(provision_argv(str(manifest), "--server", "http://127.0.0.1:9/", "--out",
                                          str(tmp_path / "o"), *hsm.args()[:-1], "pass:0000"),
                           capture_output=True, text=True, env=hsm.env, timeout=60, check=False)
    line = wrong.stderr.strip().splitlines()[-1]
    assert wrong.returncode == 1 and line == "fleet: error: wrong PIN for PKCS#11 token 'fleet-test'", wrong.stderr
    manifest.write_text("id,subject,secret,key_type\ned-1,/CN=ed-1,pass:x,ed25519\n")
    edwards = provision(hsm, str(manifest), "--server", "http://127.0.0.1:9/", "--out", str(tmp_path / "o"))
    assert edwards.returncode == 1 and edwards.stderr.strip() == (
        "fleet: error: device ed-1: token keys are ec:P-256, ec:P-384, ec:P-521, rsa:2048, rsa:3072, rsa:4096, "
        "not ed25519"), edwards.stderr


def test_fleet_cmp_ir_and_kur_with_token_keys(hsm: SoftHsm, tmp_path: Path) -> None:
    """ir makes --newkey in the token (its POP signed there); kur is signed with that token key
    (--key is a label) and certifies a second token key; both certificates go back to the token."""
    ca = CaProcess(tmp_path)
    try:
        def cmp(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "fleet.cli.main", "cmp", *args, "--server", ca.url,
                                   *hsm.args()], capture_output=True, text=True, env=hsm.env, cwd=tmp_path,
                                  timeout=120, check=False, stdin=subprocess.DEVNULL)

        ir = cmp("ir", "--ref", "d0000", "--secret", f"pass:{secret_for('d0000')}", "--subject", "/CN=hsm-1",
                 "--newkey", "hsm-1", "--certout", "one.pem", "--chainout", "chain.pem")
        assert ir.returncode == 0, ir.stderr
        assert not (tmp_path / "hsm-1").exists()  # a label, not a key file
        kur = cmp("kur", "--cert", "one.pem", "--key", "hsm-1", "--trusted", str(ca.root_path),
                  "--untrusted", "chain.pem", "--newkey", "hsm-2", "--certout", "two.pem")
        assert kur.returncode == 0, kur.stderr
        objects = hsm.objects()
        out = tmp_path / "certs"
        for label, pem in (("hsm-1", "one.pem"), ("hsm-2", "two.pem")):
            (out / label).mkdir(parents=True)
            shutil.copy(tmp_path / pem, out / label / "cert.pem")
            check_device(hsm, objects, out, label)
        missing = cmp("kur", "--cert", "two.pem", "--key", "no-such-key", "--trusted", str(ca.root_path),
                      "--newkey", "hsm-3")
        assert missing.returncode == 1
        assert missing.stderr.strip() == "fleet: error: --key: no key labelled 'no-such-key' in PKCS#11 token 'fleet-test'"
    finally:
        ca.stop()



_SIGN_PREHASHED = """
import sys
from pathlib import Path
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from fleet.pkcs11 import Token
module, label, pin = sys.argv[1:]
with Token(Path(module), label, "pass:" + pin) as token:
    key = token.key_or_new("prehashed", "ec:P-256")
    h = hashes.Hash(hashes.SHA256())
    h.update(b"fleet")
    digest = h.finalize()
    for data in (digest, bytearray(digest), memoryview(digest)):
        signature = key.sign(data, ec.ECDSA(Prehashed(hashes.SHA256())))
        key.public_key().verify(signature, b"fleet", ec.ECDSA(hashes.SHA256()))
print("ok")
"""


def test_token_ec_key_signs_a_prehashed_digest_given_as_any_buffer(hsm: SoftHsm) -> None:
    """EllipticCurvePrivateKey.sign takes bytes, bytearray or memoryview; a prehashed digest that
    is not bytes must reach the token as the digest, not as python-pkcs11's iterable of parts."""
    done = subprocess.run([sys.executable, "-c", _SIGN_PREHASHED, str(MODULE), hsm.label, PIN],
                          env=hsm.env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_rsa_token_keys_sign_with_pss(hsm: SoftHsm, tmp_path: Path) -> None:
    """--newkey-type rsa:2048 makes an RSA key in the token; with --pss its POP (ir, kur) and the
    kur's protection (--key, the first token key) are RSASSA-PSS, signed in the token, and the
    CA accepts them: the requests as sent, read through a recording proxy, say so."""
    ca = CaProcess(tmp_path)
    try:
        with recording_proxy(ca.url) as proxy:
            def cmp(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "fleet.cli.main", "cmp", *args, "--server", f"http://127.0.0.1:{proxy.port}/.well-known/cmp",
                                       "--pss", "--newkey-type", "rsa:2048", *hsm.args()], capture_output=True,
                                      text=True, env=hsm.env, cwd=tmp_path, timeout=120, check=False,
                                      stdin=subprocess.DEVNULL)

            ir = cmp("ir", "--ref", "d0000", "--secret", f"pass:{secret_for('d0000')}", "--subject", "/CN=hsm-rsa",
                     "--newkey", "rsa-1", "--certout", "one.pem", "--chainout", "chain.pem")
            assert ir.returncode == 0, ir.stderr
            kur = cmp("kur", "--cert", "one.pem", "--key", "rsa-1", "--trusted", str(ca.root_path),
                      "--untrusted", "chain.pem", "--newkey", "rsa-2", "--certout", "two.pem")
            assert kur.returncode == 0, kur.stderr
            sent = [messages.decode(body) for _, body in proxy.requests]
        pss = der.oid(oids.RSASSA_PSS)
        ir_msg, kur_msg = (next(m for m in sent if m.body_type is kind) for kind in (BodyType.IR, BodyType.KUR))
        for msg in (ir_msg, kur_msg):
            popo = msg.body.messages[0].popo  # type: ignore[union-attr]
            assert popo is not None and popo.algorithm is not None and pss in popo.algorithm
        assert kur_msg.header.protection_alg is not None and pss in kur_msg.header.protection_alg
        objects = hsm.objects()
        out = tmp_path / "certs"
        for label, pem in (("rsa-1", "one.pem"), ("rsa-2", "two.pem")):
            (out / label).mkdir(parents=True)
            shutil.copy(tmp_path / pem, out / label / "cert.pem")
            check_device(hsm, objects, out, label)
            assert x509.load_pem_x509_certificate((tmp_path / pem).read_bytes()).public_key().key_size == 2048
    finally:
        ca.stop()
