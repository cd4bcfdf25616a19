"""The requests of ``fleet run``'s virtual devices, checked as a strict RFC 9483 server checks
them (``strict_lwcmp``, pyasn1-alt-modules): the MAC sender names the device's reference, vendor
(IDevID) and enrolled devices send their certificate's chain, rr carries one CRLReason; and the
profile's [devices] header keys reach the messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import strict_lwcmp as strict
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cmp.client import ClientTransaction
from fleet.cmp.shared_secrets import derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.errors import FleetError
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory, VendorCa
from fleet.load.profiles import DevicePopulation, ProfileError, parse_profile

MASTER = b"master secret for tests"
CN = "2.5.4.3"


def factory(spec: DevicePopulation | None = None, **kw: object) -> DeviceFactory:
    spec = spec or DevicePopulation()
    pools = {str(k): KeyPool(KeySpec.parse(str(k)), (), on_exhausted="generate") for k, _ in spec.key_types}
    return DeviceFactory(spec, pools, master_secret=MASTER, trust=kw.pop("trust", TrustStore()), **kw)  # type: ignore[arg-type]


def first_request(f: DeviceFactory, op: str, index: int) -> bytes:
    protector, request, _ = f.request(op, index)
    return ClientTransaction(f.client_config, request, protector=protector).start().data


def ca_cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
            *, ca: bool = True, public: object = None) -> x509.Certificate:
    subject = x509.Name.from_rfc4514_string(f"CN={name}")
    now = datetime.now(UTC)
    public_key = public or key.public_key()
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[0] if issuer else subject)
        .public_key(public_key).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
        .sign(issuer[1] if issuer else key, hashes.SHA256())
    )


def test_mac_sender_is_the_devices_reference() -> None:
    """Before: the requested subject (CN=fleet-device-000012), which a strict server refuses."""
    f = factory()
    for op in ("ir", "p10cr", "genm"):
        data = first_request(f, op, 12)
        assert strict.sender_attributes(data) == [(CN, "dev-00000012")], op
        assert strict.problems(data, secret=derive_device_secret(MASTER, b"dev-00000012")) == [], op


def test_profile_header_keys_reach_the_messages() -> None:
    profile = parse_profile({"devices": {
        "reference": "CN=gnb-{index:06d}", "recipient": "/CN=Operator CA", "message_time": False,
        "max_iterations": 300_000,
    }}, where="t.toml")
    f = factory(profile.devices)
    data = first_request(f, "ir", 7)
    header = strict.decode(data)["header"]
    assert bytes(header["senderKID"]) == b"CN=gnb-000007"
    assert strict.sender_attributes(data) == [(CN, "gnb-000007")]  # the reference is a name: that name
    assert strict.name_attributes(header["recipient"]["directoryName"]) == [(CN, "Operator CA")]
    assert not header["messageTime"].isValue
    assert f.client_config.max_iterations == 300_000
    assert strict.problems(data, secret=derive_device_secret(MASTER, b"CN=gnb-000007")) == []
    # An explicit sender template is the profile's choice.
    f = factory(DevicePopulation(sender="/O=Operator/CN=gnb-{index}"))
    assert strict.sender_attributes(first_request(f, "ir", 7)) == [("2.5.4.10", "Operator"), (CN, "gnb-7")]


@pytest.mark.parametrize(("devices", "words"), [
    ({"max_iterations": 0}, "max_iterations: must be an integer >= 1"),
    ({"message_time": "no"}, "message_time: must be true or false"),
    ({"sender": 5}, "sender: must be a string"),
])
def test_profile_header_keys_are_checked(devices: dict[str, object], words: str) -> None:
    with pytest.raises(ProfileError, match=words):
        parse_profile({"devices": devices}, where="t.toml")


@pytest.mark.parametrize(("spec", "words"), [
    (DevicePopulation(sender="/XX=1"), "cannot parse name component 'XX=1'"),
    (DevicePopulation(reference="dev-{serial}"), "template: KeyError('serial')"),
    (DevicePopulation(reference="hex:zz{index}"), "is not hex after 'hex:'"),
    (DevicePopulation(recipient="CN"), "cannot parse name 'CN'"),
])
def test_bad_header_templates_fail_before_the_run(spec: DevicePopulation, words: str) -> None:
    """One line naming the problem, when the factory is made (before any device runs)."""
    with pytest.raises(FleetError) as info:
        factory(spec)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_vendor_ir_sends_the_vendor_intermediate() -> None:
    """TS 33.310 §9.5.4 / RFC 9483 §3.3: the IDevID, then the vendor CA that issued it; the
    vendor root (self-signed, the CA's vendor trust anchor) stays out."""
    root = VendorCa(name="vendor root", path_length=None)
    issuing = VendorCa(name="vendor issuing CA", issuer=root)
    f = factory(DevicePopulation(auth="vendor"), vendor=issuing)
    for index in (3, 4):
        data = first_request(f, "ir", index)
        assert strict.extra_cert_subjects(data) == [f"2.5.4.5={index:08d},CN=IDevID {index:08d}", "CN=vendor issuing CA"]
        assert strict.problems(data, anchors=[root.cert]) == []
    # A vendor root issuing IDevIDs directly: the IDevID alone.
    f = factory(DevicePopulation(auth="vendor"), vendor=root)
    assert len(strict.extra_cert_subjects(first_request(f, "ir", 5))) == 1


def test_kur_and_rr_send_the_chain_the_ip_carried() -> None:
    root_key, issuing_key, device_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = ca_cert("Load Root", root_key, None)
    issuing = ca_cert("Load Issuing CA", issuing_key, (root.subject, root_key))
    device = ca_cert("device-1", device_key, (issuing.subject, issuing_key), ca=False)
    f = factory(trust=TrustStore([root]))
    der = device.public_bytes(Encoding.DER)
    f.enrolled(1, device_key, der)  # no chain known yet: the certificate alone
    assert strict.extra_cert_subjects(first_request(f, "rr", 1)) == ["CN=device-1"]
    f.enrolled(1, device_key, der, (issuing.public_bytes(Encoding.DER), root.public_bytes(Encoding.DER)))
    for op in ("kur", "rr"):
        data = first_request(f, op, 1)
        assert strict.extra_cert_subjects(data) == ["CN=device-1", "CN=Load Issuing CA"], op
        assert strict.problems(data, anchors=[root]) == [], op
    assert strict.crl_reasons(first_request(f, "rr", 1)) == [1]  # keyCompromise: exactly one
