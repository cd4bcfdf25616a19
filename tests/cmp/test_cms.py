"""CMS for central key generation (fleet.cmp.cms, fleet.cmp.keypackage) against `openssl cms`.

Both directions, for the three recipient infos: OpenSSL (3.0 here) must decrypt and verify what
fleet seals, and fleet must open what `openssl cms -sign` then `openssl cms -encrypt` made. The
hostile cases each raise their own typed error.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from openssl_peer import OPENSSL

from fleet.cmp import cms, keypackage
from fleet.cmp.cms import Recipient
from fleet.cmp.keypackage import ID_CT_KP_A_KEY_PACKAGE, ID_KP_CM_KGA, open_key, seal_key
from fleet.cmp.trust import TrustStore


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(key, cn, issuer_key=None, issuer=None, *, ca=False, eku=None, ski=True):  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(issuer.subject if issuer else _name(cn)).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in eku]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


@dataclass
class Pki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    kga: x509.Certificate
    kga_key: ec.EllipticCurvePrivateKey
    ec_cert: x509.Certificate
    ec_key: ec.EllipticCurvePrivateKey
    rsa_cert: x509.Certificate
    rsa_key: rsa.RSAPrivateKey
    trust: TrustStore
    dir: Path


def _pem(path: Path, obj) -> Path:  # type: ignore[no-untyped-def]
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("kga-pki")
    rk = ec.generate_private_key(ec.SECP256R1())
    root = _cert(rk, "KGA test root", ca=True)
    kk = ec.generate_private_key(ec.SECP256R1())
    kga = _cert(kk, "KGA", rk, root, eku=[ID_KP_CM_KGA])
    ek = ec.generate_private_key(ec.SECP256R1())
    xk = rsa.generate_private_key(65537, 2048)
    p = Pki(root, rk, kga, kk, _cert(ek, "device-ec", rk, root), ek, _cert(xk, "device-rsa", rk, root), xk,
            TrustStore([root]), d)
    for name, obj in [("root.pem", root), ("kga.pem", kga), ("kga.key", kk), ("ec.pem", p.ec_cert),
                      ("ec.key", ek), ("rsa.pem", p.rsa_cert), ("rsa.key", xk)]:
        _pem(d / name, obj)
    return p


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, timeout=60, check=False)


def _issued_for(pki: Pki, key) -> x509.Certificate:  # type: ignore[no-untyped-def]
    return _cert(key, "issued", pki.root_key, pki.root)


# The three ways a KGA encrypts, with how fleet seals, how openssl opens and encrypts, how fleet opens.
def _ways(pki: Pki) -> dict[str, tuple[dict, list[str], list[str], Recipient]]:  # type: ignore[type-arg]
    d = pki.dir
    return {
        "pwri": ({"password": b"device secret"}, ["-pwri_password", "device secret"],
                 ["-pwri_password", "device secret"], Recipient(password=b"device secret")),
        "kari": ({"recipient_cert": pki.ec_cert}, ["-recip", str(d / "ec.pem"), "-inkey", str(d / "ec.key")],
                 [str(d / "ec.pem")], Recipient(key=pki.ec_key, cert=pki.ec_cert)),
        "ktri": ({"recipient_cert": pki.rsa_cert}, ["-recip", str(d / "rsa.pem"), "-inkey", str(d / "rsa.key")],
                 [str(d / "rsa.pem")], Recipient(key=pki.rsa_key, cert=pki.rsa_cert)),
    }


@pytest.mark.parametrize("way", ["pwri", "kari", "ktri"])
@pytest.mark.parametrize("key_type", ["ec", "rsa", "ed25519"])
def test_openssl_decrypts_and_verifies_what_fleet_seals(pki: Pki, tmp_path: Path, way: str, key_type: str) -> None:
    new_key = {"ec": lambda: ec.generate_private_key(ec.SECP256R1()),
               "rsa": lambda: pki.rsa_key, "ed25519": ed25519.Ed25519PrivateKey.generate}[key_type]()
    seal_kw, decrypt_args, _, _ = _ways(pki)[way]
    sealed = seal_key(new_key, pki.kga_key, pki.kga, **seal_kw)
    assert sealed[0] == 0xA0  # EncryptedKey's [0] envelopedData, implicitly tagged
    env = tmp_path / "env.der"
    env.write_bytes(cms.content_info(cms.ID_ENVELOPED_DATA, b"\x30" + sealed[1:]))
    out = _openssl("cms", "-decrypt", "-inform", "DER", "-in", env, *decrypt_args, "-out", tmp_path / "sd.der")
    assert out.returncode == 0, out.stderr
    signed = tmp_path / "signed.der"
    signed.write_bytes(cms.content_info(cms.ID_SIGNED_DATA, (tmp_path / "sd.der").read_bytes()))
    out = _openssl("cms", "-verify", "-inform", "DER", "-in", signed, "-CAfile", pki.dir / "root.pem",
                   "-purpose", "any", "-out", tmp_path / "akp.der")
    assert out.returncode == 0, out.stderr
    assert b"Verification successful" in out.stderr
    out = _openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", signed)
    assert b"id-ct-KP-aKeyPackage" in out.stdout or ID_CT_KP_A_KEY_PACKAGE.encode() in out.stdout
    # The verified content is an AsymmetricKeyPackage holding exactly the generated key.
    package = (tmp_path / "akp.der").read_bytes()
    loaded = serialization.load_der_private_key(package[package.index(b"\x30", 2):], None)
    assert loaded.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        new_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _openssl_sealed(pki: Pki, tmp_path: Path, way: str, new_key, *, signer: str = "kga") -> bytes:  # type: ignore[no-untyped-def]
    """An EncryptedKey made by `openssl cms -sign` then `openssl cms -encrypt`."""
    package = tmp_path / "akp.der"
    package.write_bytes(b"\x30" + _len(new_key) + _pkcs8(new_key))
    _, _, encrypt_args, _ = _ways(pki)[way]
    out = _openssl("cms", "-sign", "-binary", "-nodetach", "-econtent_type", ID_CT_KP_A_KEY_PACKAGE,
                   "-in", package, "-signer", pki.dir / f"{signer}.pem", "-inkey", pki.dir / f"{signer}.key",
                   "-outform", "DER", "-out", tmp_path / "signed.der")
    assert out.returncode == 0, out.stderr
    out = _openssl("cms", "-encrypt", "-binary", "-aes-256-cbc", "-in", tmp_path / "signed.der",
                   "-outform", "DER", "-out", tmp_path / "env.der", *encrypt_args)
    assert out.returncode == 0, out.stderr
    _, enveloped = cms.read_content_info((tmp_path / "env.der").read_bytes())
    return b"\xa0" + enveloped[1:]


def _pkcs8(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _len(key) -> bytes:  # type: ignore[no-untyped-def]
    n = len(_pkcs8(key))
    return bytes((n,)) if n < 0x80 else (b"\x81" + bytes((n,)) if n < 0x100 else b"\x82" + n.to_bytes(2, "big"))


@pytest.mark.parametrize("way", ["pwri", "kari", "ktri"])
def test_fleet_opens_what_openssl_signed_and_encrypted(pki: Pki, tmp_path: Path, way: str) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    sealed = _openssl_sealed(pki, tmp_path, way, new_key)
    recipient = _ways(pki)[way][3]
    got = open_key(sealed, recipient, trust=pki.trust, issued=_issued_for(pki, new_key))
    assert _pkcs8(got) == _pkcs8(new_key)


def test_fleet_opens_openssl_ktri_with_oaep(pki: Pki, tmp_path: Path) -> None:
    """RSAES-OAEP as well as OpenSSL's default PKCS #1 v1.5 key transport."""
    new_key = ec.generate_private_key(ec.SECP256R1())
    sd = keypackage.signed_key_package(new_key, pki.kga_key, pki.kga)
    (tmp_path / "sd.der").write_bytes(sd)
    out = _openssl("cms", "-encrypt", "-binary", "-aes-256-cbc", "-in", tmp_path / "sd.der", "-outform", "DER",
                   "-out", tmp_path / "env.der", "-recip", pki.dir / "rsa.pem", "-keyopt", "rsa_padding_mode:oaep")
    assert out.returncode == 0, out.stderr
    _, enveloped = cms.read_content_info((tmp_path / "env.der").read_bytes())
    got = open_key(b"\xa0" + enveloped[1:], Recipient(key=pki.rsa_key, cert=pki.rsa_cert), trust=pki.trust,
                   issued=_issued_for(pki, new_key))
    assert _pkcs8(got) == _pkcs8(new_key)


# -- hostile cases: each its own typed error ----------------------------------------------------


def test_wrong_password(pki: Pki, tmp_path: Path) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    for sealed in (seal_key(new_key, pki.kga_key, pki.kga, password=b"right"),
                   _openssl_sealed(pki, tmp_path, "pwri", new_key)):
        with pytest.raises(cms.WrongPassword, match="wrong shared secret"):
            open_key(sealed, Recipient(password=b"wrong"), trust=pki.trust, issued=_issued_for(pki, new_key))


@pytest.mark.parametrize("way", ["kari", "ktri"])
def test_envelope_for_another_recipient(pki: Pki, way: str) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1()) if way == "kari" else rsa.generate_private_key(65537, 2048)
    other = _cert(other_key, "someone else", pki.root_key, pki.root)
    sealed = seal_key(new_key, pki.kga_key, pki.kga, recipient_cert=other)
    mine = _ways(pki)[way][3]
    with pytest.raises(cms.EnvelopeNotForUs, match="another recipient"):
        open_key(sealed, mine, trust=pki.trust, issued=_issued_for(pki, new_key))
    # and a password-based envelope is not for a certificate holder either
    with pytest.raises(cms.EnvelopeNotForUs, match=r"holds pwri"):
        open_key(seal_key(new_key, pki.kga_key, pki.kga, password=b"p"), mine, trust=pki.trust,
                 issued=_issued_for(pki, new_key))


def test_signer_without_cmkga(pki: Pki, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = _cert(key, "not a KGA", pki.root_key, pki.root, eku=["1.3.6.1.5.5.7.3.2"])
    _pem(pki.dir / "plain.pem", plain)
    _pem(pki.dir / "plain.key", key)
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = _issued_for(pki, new_key)
    by_fleet = seal_key(new_key, key, plain, password=b"device secret")
    by_openssl = _openssl_sealed(pki, tmp_path, "pwri", new_key, signer="plain")
    for sealed in (by_fleet, by_openssl):
        with pytest.raises(keypackage.KgaNotAuthorized, match="lacks the cmKGA extended key usage"):
            open_key(sealed, Recipient(password=b"device secret"), trust=pki.trust, issued=issued)


def test_signer_outside_trust_anchors(pki: Pki) -> None:
    other_root_key = ec.generate_private_key(ec.SECP256R1())
    other_root = _cert(other_root_key, "other root", ca=True)
    kk = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert(kk, "rogue KGA", other_root_key, other_root, eku=[ID_KP_CM_KGA])
    new_key = ec.generate_private_key(ec.SECP256R1())
    sealed = seal_key(new_key, kk, rogue, password=b"p")
    with pytest.raises(keypackage.KgaUntrusted, match="trust anchors"):
        open_key(sealed, Recipient(password=b"p"), trust=pki.trust, issued=_issued_for(pki, new_key))


def test_key_not_matching_the_certificate(pki: Pki) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    sealed = seal_key(new_key, pki.kga_key, pki.kga, password=b"p")
    with pytest.raises(keypackage.KeyMismatch, match="does not match the issued certificate"):
        open_key(sealed, Recipient(password=b"p"), trust=pki.trust, issued=_issued_for(pki, other))


def test_tampered_signature_or_content(pki: Pki) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = _issued_for(pki, new_key)
    good = keypackage.signed_key_package(new_key, pki.kga_key, pki.kga)
    bad_signature = bytearray(good)
    bad_signature[-1] ^= 0x01  # the signature's last octet
    bad_content = bytearray(good)
    at = good.index(_pkcs8(new_key)) + len(_pkcs8(new_key)) - 1
    bad_content[at] ^= 0x01  # the key package itself: its message digest no longer matches
    for tampered, match in ((bad_signature, "does not verify"), (bad_content, "message-digest")):
        sealed = cms.envelope(bytes(tampered), password=b"p")
        with pytest.raises(keypackage.KgaSignatureInvalid, match=match):
            open_key(b"\xa0" + sealed[1:], Recipient(password=b"p"), trust=pki.trust, issued=issued)


def test_truncated_and_oversized_envelopes(pki: Pki) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    sealed = seal_key(new_key, pki.kga_key, pki.kga, password=b"p")
    issued = _issued_for(pki, new_key)
    for cut in (len(sealed) - 1, len(sealed) // 2, 10, 2):
        with pytest.raises(cms.MalformedEnvelope, match="malformed"):
            open_key(sealed[:cut], Recipient(password=b"p"), trust=pki.trust, issued=issued)
    huge = b"\xa0\x83" + (70_000).to_bytes(3, "big") + bytes(70_000)
    with pytest.raises(cms.EnvelopeTooLarge, match="exceeds"):
        open_key(huge, Recipient(password=b"p"), trust=pki.trust, issued=issued)


def test_pwri_iteration_cap(pki: Pki) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    sealed = seal_key(new_key, pki.kga_key, pki.kga, password=b"p", iterations=5000)
    with pytest.raises(cms.UnsupportedEnvelope, match="iteration count 5000"):
        open_key(sealed, Recipient(password=b"p", max_iterations=4000), trust=pki.trust,
                 issued=_issued_for(pki, new_key))


def test_recipient_repr_hides_secrets(pki: Pki) -> None:
    assert "secret" not in repr(Recipient(password=b"secret"))
    assert repr(Recipient(key=pki.ec_key, cert=pki.ec_cert)) == "Recipient(ECPrivateKey)"


def test_mangled_key_packages_raise_only_envelope_errors(pki: Pki) -> None:
    """Every byte of a SignedData flipped or cut, then enveloped: opening it raises an
    EnvelopeError subclass (never another exception) or, for a flip nothing depends on, returns
    the right key."""
    import random

    rng = random.Random(13)
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = _issued_for(pki, new_key)
    good = keypackage.signed_key_package(new_key, pki.kga_key, pki.kga)
    for i in range(400):
        data = bytearray(good)
        if i % 4 == 3:
            data = data[: rng.randrange(len(data))]
        else:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        sealed = cms.envelope(bytes(data), password=b"p")
        try:
            got = open_key(b"\xa0" + sealed[1:], Recipient(password=b"p"), trust=pki.trust, issued=issued)
        except cms.EnvelopeError:
            continue
        assert _pkcs8(got) == _pkcs8(new_key)


@pytest.mark.parametrize("way", ["pwri", "kari", "ktri"])
def test_mangled_envelopes_raise_only_envelope_errors(pki: Pki, way: str) -> None:
    """Bits flipped and bytes cut anywhere in the EnvelopedData: an EnvelopeError subclass."""
    import random

    rng = random.Random(17)
    new_key = ec.generate_private_key(ec.SECP256R1())
    issued = _issued_for(pki, new_key)
    seal_kw, _, _, recipient = _ways(pki)[way]
    good = seal_key(new_key, pki.kga_key, pki.kga, **seal_kw)
    for i in range(150):
        data = bytearray(good)
        if i % 4 == 3:
            data = data[: rng.randrange(1, len(data))]
        else:
            data[rng.randrange(1, len(data))] ^= 1 << rng.randrange(8)
        try:
            got = open_key(bytes(data), recipient, trust=pki.trust, issued=issued)
        except cms.EnvelopeError:
            continue
        assert _pkcs8(got) == _pkcs8(new_key)


# -- the PWRI salt and KEK kept per shared secret (cms.PwriKeyCache) ------------------------------


def _pwri_salt(sealed: bytes) -> bytes:
    from fleet.cmp import der

    info = der.parse(b"\x30" + sealed[1:]).children()[1].children()[0]  # recipientInfos' [3] PWRI
    return info.children()[1].children()[1].children()[0].content  # [0] PBKDF2 -> params -> salt


def test_a_kept_kek_reuses_the_salt_per_secret_and_openssl_still_decrypts(pki: Pki, tmp_path: Path) -> None:
    cache = cms.PwriKeyCache()
    new_key = ec.generate_private_key(ec.SECP256R1())
    first, second = (seal_key(new_key, pki.kga_key, pki.kga, password=b"device secret", kek_cache=cache)
                     for _ in range(2))
    other = seal_key(new_key, pki.kga_key, pki.kga, password=b"another secret", kek_cache=cache)
    assert _pwri_salt(first) == _pwri_salt(second) != _pwri_salt(other)
    assert first != second  # content key, IVs and the wrap's padding are fresh per envelope
    for i, sealed in enumerate((first, second)):
        env = tmp_path / f"env{i}.der"
        env.write_bytes(cms.content_info(cms.ID_ENVELOPED_DATA, b"\x30" + sealed[1:]))
        out = _openssl("cms", "-decrypt", "-inform", "DER", "-in", env, "-pwri_password", "device secret",
                       "-out", tmp_path / f"sd{i}.der")
        assert out.returncode == 0, out.stderr
    # The device keeps what it derived: the second envelope opens from its cache, a wrong
    # secret is still a wrong secret.
    device = cms.PwriKeyCache()
    issued = _issued_for(pki, new_key)
    for sealed in (first, second):
        got = open_key(sealed, Recipient(password=b"device secret", kek_cache=device), trust=pki.trust, issued=issued)
        assert _pkcs8(got) == _pkcs8(new_key)
    assert len(device) == 1
    with pytest.raises(cms.WrongPassword):
        open_key(second, Recipient(password=b"wrong secret", kek_cache=device), trust=pki.trust, issued=issued)


def test_the_kek_cache_is_bounded_and_zero_keeps_nothing(pki: Pki) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    small = cms.PwriKeyCache(2)
    salts = [_pwri_salt(seal_key(new_key, pki.kga_key, pki.kga, password=s, kek_cache=small))
             for s in (b"a", b"b", b"c", b"a")]
    assert len(small) == 2 and salts[3] != salts[0]  # "a" was the oldest when "c" came: dropped
    assert repr(small) == "PwriKeyCache(entries=2, held=2)"  # never the secrets
    off = cms.PwriKeyCache(0)
    assert len({_pwri_salt(seal_key(new_key, pki.kga_key, pki.kga, password=b"a", kek_cache=off))
                for _ in range(2)}) == 2 and len(off) == 0
    with pytest.raises(ValueError):
        cms.PwriKeyCache(-1)
