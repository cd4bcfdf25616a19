"""DeviceFactory: per-device identities and credentials, built cheaply but exactly as specified."""

import uuid

import pytest
from cryptography import x509

from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.shared_secrets import derive_device_secret
from fleet.cmp.trust import TrustStore
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory, DeviceSetupError
from fleet.load.profiles import DevicePopulation
from fleet.names import parse_name, parse_san

_NAMESPACE = uuid.UUID("6f1e0c1e-8d4b-4c1a-9a55-3e3f7f0b9d11")
MASTER = b"master secret for tests"


def _factory(subject: str = "/CN=fleet-device-{index:06d}", sans: tuple[str, ...] = ()) -> DeviceFactory:
    spec = DevicePopulation(count=100_000, subject=subject, sans=sans)
    pools = {str(k): KeyPool(KeySpec.parse(str(k)), (), on_exhausted="generate") for k, _ in spec.key_types}
    return DeviceFactory(spec, pools, master_secret=MASTER, trust=TrustStore())


def _expected_fields(index: int) -> dict[str, object]:
    return {"index": index, "uuid": uuid.uuid5(_NAMESPACE, str(index)), "imei": f"35{index:013d}"[:15]}


@pytest.mark.parametrize("template", [
    "/CN=fleet-device-{index:06d}",
    "/O=Test/OU=ran/CN=nf-{index}",
    "/C=DE/O=Acme {imei}/CN={uuid}",
    "/serialNumber={imei}/CN=gNB {index:>8}",
    "/CN=padded {index:<9d}",  # trailing blanks: parse_name strips the whole text
    "CN=nf-{index},O=Test",  # RFC 4514 form
    "/CN=fixed",
    "/CN={index}/CN=again-{index}",
])
def test_subject_is_what_parse_name_gives(template: str) -> None:
    f = _factory(template)
    for index in (0, 1, 7, 99_999):
        assert f.subject(index) == parse_name(template.format(**_expected_fields(index)))


def test_sans_use_every_field() -> None:
    sans = ("URI:urn:uuid:{uuid}", "DNS:nf-{index}.example.org", "URI:urn:imei:{imei}")
    f = _factory(sans=sans)
    fields = _expected_fields(4242)
    assert f.sans(4242) == [parse_san(s.format(**fields)) for s in sans]
    assert f.sans(4242)[0] == x509.UniformResourceIdentifier(f"urn:uuid:{fields['uuid']}")


def test_unknown_template_field_fails_before_the_run() -> None:
    with pytest.raises(DeviceSetupError, match="template"):
        _factory("/CN={serial}")
    with pytest.raises(DeviceSetupError, match="template"):
        _factory(sans=("DNS:{nope}.example.org",))


def test_mac_protector_is_the_devices_own() -> None:
    f = _factory()
    data = b"protected part"
    seen = set()
    for index in (0, 1, 2, 31_337):
        reference = f.reference(index)
        got = f.mac(index)
        fresh = MacProtector(
            derive_device_secret(MASTER, reference), reference=reference, iterations=f.spec.pbm_iterations, salt=f._salt,
        )
        assert got.sender_kid == reference
        assert got.secret == derive_device_secret(MASTER, reference)
        assert got.algorithm == fresh.algorithm
        assert got.protect(data) == fresh.protect(data)
        assert got.secret.decode() not in repr(got)
        seen.add(got.protect(data))
    assert len(seen) == 4  # no device MACs with another's secret


def test_ir_request_carries_the_devices_identity() -> None:
    f = _factory("/O=Test/CN=nf-{index}", ("DNS:nf-{index}.example.org",))
    protector, request, key = f.request("ir", 12)
    assert isinstance(request, CertRequest)
    assert request.subject == parse_name("/O=Test/CN=nf-12").public_bytes()  # written as DER directly
    assert request.subject_der == parse_name("/O=Test/CN=nf-12").public_bytes()
    assert list(request.sans) == [parse_san("DNS:nf-12.example.org")]
    assert key is request.new_key
    assert protector.sender_kid == b"dev-00000012"
    assert f.client_config.protector is None and f.client_config is f.client_config  # one, shared


def test_mac_protectors_are_constructed_when_copying_would_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MacProtector ever kept its secret somewhere the copy does not replace, the factory must
    notice once and build every protector with the constructor instead."""
    original_init = MacProtector.__init__

    def init_with_derived_copy(self: MacProtector, secret: bytes, **kw: object) -> None:
        original_init(self, secret, **kw)  # type: ignore[arg-type]
        self.__dict__["_pinned"] = secret  # a field the copy would carry over unchanged

    monkeypatch.setattr(MacProtector, "__init__", init_with_derived_copy)
    f = _factory()
    a, b = f.mac(1), f.mac(2)
    assert f._mac_copyable is False
    assert a.__dict__["_pinned"] == a.secret and b.__dict__["_pinned"] == b.secret


@pytest.mark.parametrize("master", [MASTER, b"", b"k" * 64, bytes(range(200))])  # short, empty, block, hashed
def test_device_secret_from_pad_states_is_derive_device_secret(master: bytes) -> None:
    spec = DevicePopulation(count=100_000)
    pools = {str(k): KeyPool(KeySpec.parse(str(k)), (), on_exhausted="generate") for k, _ in spec.key_types}
    factory = DeviceFactory(spec, pools, master_secret=master, trust=TrustStore())
    assert factory._device_secret is not None and factory._device_secret._pads is not None  # the fast path
    for index in (0, 1, 42, 99_999):
        assert factory.mac(index).secret == derive_device_secret(master, factory.reference(index))


@pytest.mark.parametrize("template", [
    "/CN=fleet-device-{index:06d}",
    "/O=Test/OU=ran/CN=nf-{index}",
    "/C=DE/O=Acme {imei}/CN={uuid}",
    "/serialNumber={imei}/CN=gNB {index:>8}",
    "/CN=fixed",
    "/CN={index}/CN=again-{index}",
    "/emailAddress=dev{index}@example.org/DC=example/CN=nf-{index}",
    "/CN=Gerät-{index}/O=Müller",  # UTF-8
    "/O=" + "o" * 60 + "/OU=" + "u" * 60 + "/CN=nf-{index}",  # the Name's length takes two octets
])
def test_subject_der_is_parse_names_der(template: str) -> None:
    f = _factory(template)
    assert f._subject.der_parts is not None  # the direct writer is the path under test
    for index in (0, 7, 4096, 99_999, 123_456_789):
        got = f.subject_der(index)
        assert isinstance(got, bytes)
        assert got == parse_name(template.format(**_expected_fields(index))).public_bytes()


@pytest.mark.parametrize(("template", "index"), [
    ("/CN=" + "x" * 60 + "{index}", 12_345),  # 65 octets: cryptography refuses a CN that long
    ("/serialNumber=sn_{index}", 3),  # '_' is not a PrintableString character
    ("CN=nf-{index},O=Test", 3),  # RFC 4514 form: parse_name for every device
])
def test_subject_der_leaves_what_cryptography_decides_to_the_name_path(template: str, index: int) -> None:
    f = _factory(template)
    try:
        name = f.subject(index)
    except Exception as exc:  # noqa: BLE001 - what the x509.Name path raises, subject_der raises too
        with pytest.raises(type(exc)):
            f.subject_der(index)
        return
    assert f.subject_der(index) == name  # an x509.Name, as subject() gives it
