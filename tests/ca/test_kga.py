"""Central key generation end to end: fleet's client against the embedded CA as KGA (in process,
sans I/O), every delivery (PWRI, KARI, KTRI) and key type, the refusals with their failInfo,
the records, and `openssl cms` decrypting what the CA delivered."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from openssl_peer import OPENSSL

from fleet.ca.authority import Authority
from fleet.ca.kga import KGA_CERT, build_kga
from fleet.cmp import cms, keypackage
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.errors import RequestRejected
from fleet.cmp.kga import key_algorithm
from fleet.cmp.messages import BodyType
from fleet.cmp.messages.decoding import decode
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import CmpServer, ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.keytypes import KeySpec

MASTER = b"kga-master"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])


class Ca:
    def __init__(self, folder: Path, **kga: object) -> None:
        self.folder = folder
        self.authority = Authority.open(folder, base_url="http://127.0.0.1:9")
        self.kga = build_kga(folder, self.authority.hierarchy, **kga)  # type: ignore[arg-type]
        self.server = self._server(self.kga)
        self.root = x509.load_der_x509_certificate(self.authority.root)
        self.trust = TrustStore([self.root])
        self.responses: list[bytes] = []

    def _server(self, kga: object) -> CmpServer:
        return self.authority.server(config=ServerConfig(grant_implicit_confirm=False),
                                     secrets=SharedSecrets(master=MASTER), kga=kga)  # type: ignore[arg-type]

    def run(self, tx: ClientTransaction, server: CmpServer | None = None) -> Done:
        step = tx.start()
        while isinstance(step, Send):
            reply = (server or self.server).handle(step.data, time.time()).data
            self.responses.append(reply)
            step = tx.receive(reply)
        assert isinstance(step, Done)
        return step

    def mac(self, reference: bytes = b"dev-1", trust: bool = True) -> ClientConfig:
        secret = derive_device_secret(MASTER, reference)
        return ClientConfig(MacProtector(secret, reference=reference), self.trust if trust else None)

    def signed(self, key, cert: x509.Certificate) -> ClientConfig:  # type: ignore[no-untyped-def]
        chain = [x509.load_der_x509_certificate(c) for c in self.authority.issued_chain]
        return ClientConfig(SignatureProtector(key, cert, chain), self.trust)

    def enroll_local(self, key) -> x509.Certificate:  # type: ignore[no-untyped-def]
        done = self.run(ClientTransaction(self.mac(), CertRequest(BodyType.IR, key, subject=_name("signer"))))
        assert done.certificate is not None
        return x509.load_der_x509_certificate(done.certificate)


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return Ca(tmp_path / "ca")


def _central(kind: BodyType = BodyType.IR, key_type: str | None = "ec:P-256", **kw: object) -> CertRequest:
    alg = key_algorithm(key_type) if key_type else b""
    if kind is not BodyType.KUR:
        kw.setdefault("subject", _name("central"))
    return CertRequest(kind, None, central_key_alg=alg, **kw)  # type: ignore[arg-type]


def _spki(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_delivered(ca: Ca, done: Done, spec: str, delivery: str) -> x509.Certificate:
    assert done.private_key is not None and done.certificate is not None
    cert = x509.load_der_x509_certificate(done.certificate)
    assert _spki(done.private_key) == _spki(cert)
    assert str(KeySpec.of(done.private_key)) == spec
    ca.authority.store.flush()
    assert ca.authority.store.central_key(cert.serial_number) == (spec, delivery)
    assert ca.authority.store.get(cert.serial_number).status.value == "issued"  # confirmed
    return cert


def test_mac_ir_gets_its_key_by_pwri(ca: Ca) -> None:
    done = ca.run(ClientTransaction(ca.mac(), _central()))
    _check_delivered(ca, done, "ec:P-256", "pwri")
    # The records never hold the key: no DER of it anywhere in the store file.
    ca.authority.store.flush()
    pkcs8 = done.private_key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    scalar = pkcs8[-100:][:32]
    assert all(scalar not in p.read_bytes() for p in ca.folder.iterdir() if p.is_file() and p.suffix != ".pem")


def _salt_of(response: bytes) -> bytes:
    from fleet.cmp import der

    sealed = decode(response).body.responses[0].private_key  # type: ignore[union-attr]
    info = der.parse(b"\x30" + sealed[1:]).children()[1].children()[0]
    return info.children()[1].children()[1].children()[0].content


@pytest.mark.parametrize("kek_cache", [65_536, 0])
def test_a_repeat_device_keeps_its_pwri_salt_unless_the_cache_is_off(tmp_path: Path, kek_cache: int) -> None:
    """kga_kek_cache: the CA keeps a device's PWRI salt and KEK (no PBKDF2 the second time);
    0 derives afresh per envelope. Either way the device opens its key and a second device
    gets a salt of its own."""
    ca = Ca(tmp_path / "ca", kek_cache=kek_cache)
    salts = []
    for reference in (b"dev-1", b"dev-1", b"dev-2"):
        before = len(ca.responses)
        done = ca.run(ClientTransaction(ca.mac(reference), _central()))
        _check_delivered(ca, done, "ec:P-256", "pwri")
        salts.append(_salt_of(ca.responses[before]))
    assert (salts[0] == salts[1]) == (kek_cache > 0) and salts[2] not in salts[:2]


@pytest.mark.parametrize("key_type", ["ec:P-384", "rsa:2048", "ed25519", None])
def test_key_types(ca: Ca, key_type: str | None) -> None:
    done = ca.run(ClientTransaction(ca.mac(), _central(key_type=key_type)))
    _check_delivered(ca, done, key_type or "ec:P-256", "pwri")  # None: the KGA's default


def test_ec_signer_gets_kari_and_rsa_signer_ktri(ca: Ca) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_cert = ca.enroll_local(ec_key)
    done = ca.run(ClientTransaction(ca.signed(ec_key, ec_cert), _central(BodyType.CR)))
    _check_delivered(ca, done, "ec:P-256", "kari")
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_cert = ca.enroll_local(rsa_key)
    done = ca.run(ClientTransaction(ca.signed(rsa_key, rsa_cert), _central(BodyType.CR)))
    _check_delivered(ca, done, "ec:P-256", "ktri")


def test_kur_with_central_generation(ca: Ca) -> None:
    old_key = ec.generate_private_key(ec.SECP256R1())
    old = ca.enroll_local(old_key)
    done = ca.run(ClientTransaction(ca.signed(old_key, old), _central(BodyType.KUR, old_cert=old)))
    new = _check_delivered(ca, done, "ec:P-256", "kari")
    assert new.subject == old.subject


def _refusal(ca: Ca, config: ClientConfig, request: CertRequest, server: CmpServer | None = None) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        ca.run(ClientTransaction(config, request), server)
    return info.value


def test_refusals_carry_the_right_fail_info(ca: Ca, tmp_path: Path) -> None:
    ed448_alg = b"\x30\x05\x06\x03\x2b\x65\x71"  # id-Ed448: not generated
    assert "badCertTemplate" in _refusal(ca, ca.mac(), _central(key_type=None).__class__(
        BodyType.IR, None, subject=_name("x"), central_key_alg=ed448_alg)).fail_names
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_cert = ca.enroll_local(ed_key)
    refused = _refusal(ca, ca.signed(ed_key, ed_cert), _central(BodyType.CR))
    assert "badAlg" in refused.fail_names and "key agreement needs EC" in str(refused)
    no_pwri = Ca(tmp_path / "nopwri", password_delivery=False)
    refused = _refusal(no_pwri, no_pwri.mac(), _central())
    assert "notAuthorized" in refused.fail_names and "password-based" in str(refused)
    off = ca._server(None)
    assert "badCertTemplate" in _refusal(ca, ca.mac(), _central(), off).fail_names
    assert ca.authority.store.counts_by_status().get("pending", 0) == 0


def test_untrusted_kga_is_refused_in_certconf(ca: Ca) -> None:
    """A cr under MAC has no caPubs: without trust anchors the KGA's signature cannot be
    checked, so the client refuses the certificate (certConf rejection) and keeps no key."""
    tx = ClientTransaction(ca.mac(trust=False), _central(BodyType.CR))
    with pytest.raises(keypackage.KgaUntrusted, match="trust anchors"):
        ca.run(tx)
    assert tx.result is None or tx.result.private_key is None
    ca.authority.store.flush()
    counts = ca.authority.store.counts_by_status()
    assert counts["rejected"] == 1 and counts["issued"] == 0 and counts["pending"] == 0


def test_kga_certificate_carries_cmkga_and_chains(ca: Ca) -> None:
    cert = x509.load_pem_x509_certificate((ca.folder / KGA_CERT).read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ObjectIdentifier(keypackage.ID_KP_CM_KGA) in eku
    ca.trust.verify(cert, [x509.load_der_x509_certificate(c) for c in ca.authority.issued_chain])
    again = build_kga(ca.folder, ca.authority.hierarchy)  # kept in the state dir
    assert again.cert == cert


def _private_key_of(ip: bytes) -> bytes:
    body = decode(ip).body
    encrypted = body.responses[0].private_key  # type: ignore[union-attr]
    assert encrypted is not None
    return encrypted


def test_openssl_decrypts_and_verifies_what_the_ca_delivers(ca: Ca, tmp_path: Path) -> None:
    issuing = tmp_path / "chain.pem"
    issuing.write_bytes(b"".join(x509.load_der_x509_certificate(c).public_bytes(serialization.Encoding.PEM)
                                 for c in (*ca.authority.issued_chain, ca.authority.root)))
    cases = []
    ca.run(ClientTransaction(ca.mac(), _central()))
    secret = derive_device_secret(MASTER, b"dev-1").decode()
    cases.append((ca.responses[-2], ["-pwri_password", secret]))
    for key in (ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)):
        cert = ca.enroll_local(key)
        (tmp_path / "r.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{len(cases)}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / f"{len(cases)}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ca.run(ClientTransaction(ca.signed(key, cert), _central(BodyType.CR)))
        cases.append((ca.responses[-2], ["-recip", str(tmp_path / f"{len(cases)}.pem"),
                                         "-inkey", str(tmp_path / f"{len(cases)}.key")]))
    for ip, args in cases:
        encrypted = _private_key_of(ip)
        (tmp_path / "env.der").write_bytes(cms.content_info(cms.ID_ENVELOPED_DATA, b"\x30" + encrypted[1:]))
        out = subprocess.run([OPENSSL, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
                              *args, "-out", str(tmp_path / "sd.der")], capture_output=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        (tmp_path / "sd.ci").write_bytes(cms.content_info(cms.ID_SIGNED_DATA, (tmp_path / "sd.der").read_bytes()))
        out = subprocess.run([OPENSSL, "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "sd.ci"),
                              "-CAfile", str(issuing), "-purpose", "any", "-out", str(tmp_path / "akp.der")],
                             capture_output=True, timeout=60, check=False)
        assert out.returncode == 0 and b"Verification successful" in out.stderr, out.stderr


def test_rsa_from_the_pre_generated_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kga_rsa_pool: RSA keys come from fleet's key pool (its last keys), in turn, reused once
    all are served; too small a pool is refused at start, naming the command that fills it."""
    from fleet.keys import KeyPoolError, KeyPoolStore

    monkeypatch.setenv("FLEET_KEYS_DIR", str(tmp_path / "keys"))
    spec = KeySpec.parse("rsa:2048")
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(3)]
    KeyPoolStore().append(spec, [k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()) for k in keys])
    with pytest.raises(KeyPoolError, match="fleet keys generate --type rsa:2048 --count 2"):
        Ca(tmp_path / "too-many", rsa_pool=5)
    ca = Ca(tmp_path / "ca", rsa_pool=2)
    served = []
    for i in range(3):
        done = ca.run(ClientTransaction(ca.mac(b"dev-%d" % i), _central(key_type="rsa:2048")))
        _check_delivered(ca, done, "rsa:2048", "pwri")
        served.append(_spki(done.private_key))
    assert served == [_spki(keys[1]), _spki(keys[2]), _spki(keys[1])]
