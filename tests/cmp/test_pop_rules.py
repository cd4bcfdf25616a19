"""Proof of possession for keys that cannot sign (RFC 9810 §5.2.8, RFC 4211 §4), requests written
by pyasn1-alt-modules: the indirect method (subsequentMessage encrCert: the certificate comes
back in an EnvelopedData only the key's holder can open, and the certConf's hash is the proof)
for X25519, X448, ECDH and RSA keys; the refusals of the methods the CA does not offer and of
raVerified from anyone but a trusted RA."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x448, x25519
from pyasn1.codec.der import decoder, encoder
from pyasn1_alt_modules import rfc5652

from fleet.ca.authority import Authority
from fleet.ca.store import CertRecordStatus
from fleet.cmp.server import CmpServer

from . import pyasn1_requests as P
from .cms_decrypt import decrypt
from .foreign_pki import foreign_pki
from .test_server_auth import REF, REJECTION, SECRET, make_server, name, send

ACCEPTED = 0
ID_DATA = "1.2.840.113549.1.7.1"


def usage(**bits: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                           "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    flags.update(bits)
    return x509.KeyUsage(**flags)


@pytest.fixture
def authority(tmp_path: Path):
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


@pytest.fixture
def server(authority: Authority) -> CmpServer:
    return make_server(authority)


def request(server: CmpServer, key, popo: str, *, implicit: bool = False, signer: P.Signed | None = None,
            **kw: object) -> P.Answer:
    msg = P.new_message("ir")
    P.cert_request_pop(msg, "ir", key.public_key(), name("no-signing-key"), popo, **kw)  # type: ignore[arg-type]
    if implicit:
        info = msg["header"]["generalInfo"]
        item = info.componentType.clone()
        item["infoType"] = P.univ.ObjectIdentifier("1.3.6.1.5.5.7.4.13")
        item["infoValue"] = P.univ.Any(encoder.encode(P.univ.Null("")))
        info.append(item)
    return send(server, P.protect(msg, signer or P.Mac(SECRET, REF)))


KEYS = {
    "x25519": (x25519.X25519PrivateKey.generate, "keyAgreement", ()),
    "x448": (x448.X448PrivateKey.generate, "keyAgreement", ()),
    "ecdh-p256": (lambda: ec.generate_private_key(ec.SECP256R1()), "keyAgreement", (usage(key_agreement=True),)),
    "rsa": (lambda: rsa.generate_private_key(65537, 2048), "keyEncipherment", ()),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_indirect_pop_returns_the_certificate_encrypted_and_certconf_proves_it(
        server: CmpServer, authority: Authority, kind: str) -> None:
    make, popo, extensions = KEYS[kind]
    key = make()
    ip = request(server, key, popo, implicit=True, extensions=extensions)
    assert (ip.body, ip.status, ip.certificate) == ("ip", ACCEPTED, None)
    assert ip.enveloped is not None
    cert_der, facts = decrypt(ip.enveloped, key)
    cert = x509.load_der_x509_certificate(cert_der)
    assert cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert facts["content_type"] == ID_DATA
    expected_rid = encoder.encode(_issuer_and_serial(cert))
    assert facts["rid"] == expected_rid
    assert facts["version"] == (0 if kind == "rsa" else 2)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.key_encipherment if kind == "rsa" else ku.key_agreement) and not ku.digital_signature
    # Not confirmed implicitly although asked: the certConf is the proof.
    assert authority.store.get(cert.serial_number).status is CertRecordStatus.PENDING
    conf = P.new_message("certConf")
    P.cert_conf(conf, cert_der)
    done = send(server, P.protect(conf, P.Mac(SECRET, REF),
                                  P.Header(transaction_id=ip.transaction_id, recip_nonce=ip.sender_nonce)))
    assert done.body == "pkiconf"
    assert authority.store.get(cert.serial_number).status is CertRecordStatus.ISSUED


def test_a_wrong_hash_in_certconf_proves_nothing(server: CmpServer, authority: Authority) -> None:
    key = x25519.X25519PrivateKey.generate()
    ip = request(server, key, "keyAgreement")
    conf = P.new_message("certConf")
    P.cert_conf(conf, b"not the certificate")
    answer = send(server, P.protect(conf, P.Mac(SECRET, REF),
                                    P.Header(transaction_id=ip.transaction_id, recip_nonce=ip.sender_nonce)))
    assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, ("badCertId",))
    assert authority.store.counts_by_status().get("rejected") == 1


def _issuer_and_serial(cert: x509.Certificate) -> rfc5652.IssuerAndSerialNumber:
    ias = rfc5652.IssuerAndSerialNumber()
    ias["issuer"] = decoder.decode(cert.issuer.public_bytes(), asn1Spec=P.rfc5280.Name())[0]
    ias["serialNumber"] = cert.serial_number
    return ias


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
# OpenSSL 3.0 has no X25519/X448 key agreement in CMS; the pyasn1 decryption above covers them.
@pytest.mark.parametrize("kind", ["ecdh-p256", "rsa"])
def test_openssl_cms_decrypts_the_encrypted_certificate(server: CmpServer, tmp_path: Path, kind: str) -> None:
    make, popo, extensions = KEYS[kind]
    key = make()
    ip = request(server, key, popo, extensions=extensions)
    assert ip.enveloped is not None
    content_info = rfc5652.ContentInfo()
    content_info["contentType"] = rfc5652.id_envelopedData
    content_info["content"] = ip.enveloped
    (tmp_path / "env.der").write_bytes(encoder.encode(content_info))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", "env.der", "-inkey", "key.pem",
                             "-binary", "-out", "cert.der"], cwd=tmp_path, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    cert = x509.load_der_x509_certificate((tmp_path / "cert.der").read_bytes())
    assert hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest() == \
        hashlib.sha256(decrypt(ip.enveloped, key)[0]).digest()


# ---------------------------------------------------------------------------------------------
# Refusals: badPOP


@pytest.mark.parametrize(("case", "key", "popo", "kw"), [
    ("X25519 signing", x25519.X25519PrivateKey.generate, "signature", {}),
    ("RSA by keyAgreement", lambda: rsa.generate_private_key(65537, 2048), "keyAgreement", {}),
    ("EC by keyEncipherment", lambda: ec.generate_private_key(ec.SECP256R1()), "keyEncipherment", {}),
    ("EC without keyUsage", lambda: ec.generate_private_key(ec.SECP256R1()), "keyAgreement", {}),
    ("EC that may sign", lambda: ec.generate_private_key(ec.SECP256R1()), "keyAgreement",
     {"extensions": (usage(key_agreement=True, digital_signature=True),)}),
    ("challengeResp", x25519.X25519PrivateKey.generate, "keyAgreement", {"value": 1}),
    ("thisMessage", x25519.X25519PrivateKey.generate, "keyAgreement", {"method": "thisMessage"}),
    ("dhMAC", x25519.X25519PrivateKey.generate, "keyAgreement", {"method": "dhMAC"}),
    ("agreeMAC", x25519.X25519PrivateKey.generate, "keyAgreement", {"method": "agreeMAC"}),
    ("raVerified from a device", lambda: ec.generate_private_key(ec.SECP256R1()), "raVerified", {}),
])
def test_pop_refusals(server: CmpServer, authority: Authority, case: str, key, popo: str, kw: dict) -> None:
    private = key()
    answer = request(server, private, popo, **kw)
    assert (answer.body, answer.status, answer.fail) == ("ip", REJECTION, ("badPOP",)), case
    assert sum(authority.store.counts_by_status().values()) == 0


def test_ra_verified_from_a_trusted_ra(authority: Authority) -> None:
    root, ra, _ = foreign_pki()
    server = make_server(authority, trusted=(root.cert,))
    key = ec.generate_private_key(ec.SECP256R1())
    answer = request(server, key, "raVerified", signer=P.Signed(ra.key, ra.cert))
    assert (answer.body, answer.status) == ("ip", ACCEPTED)
    assert answer.certificate is not None  # vouched for: the certificate comes in the clear
