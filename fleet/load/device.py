"""Virtual devices: identities derived from an index, credentials, and one lifecycle step at a time.

A device costs nothing until it acts: its reference, subject, SANs and MAC secret are derived
from its index on demand. Only devices holding a certificate keep state (the certificate and
its key), which is what kur and rr need.
"""

from __future__ import annotations

import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cmp import der
from fleet.cmp import genm as genm_items
from fleet.cmp.client import ClientConfig
from fleet.cmp.kga import key_algorithm
from fleet.cmp.messages import BodyType, InfoTypeAndValue, directory_name
from fleet.cmp.protection import (
    MacProtector,
    PrivateKey,
    SignatureProtector,
    default_hash,
    parse_reference,
)
from fleet.cmp.requests import (
    CertRequest,
    CsrRequest,
    GeneralRequest,
    PreparedCertRequest,
    Request,
    RevocationRequest,
)
from fleet.cmp.shared_secrets import DeviceSecrets
from fleet.cmp.trust import TrustStore, cert_der, load_cert, signer_chain
from fleet.errors import FleetError
from fleet.keys import KeyPool
from fleet.load.prepared import PreparedKey, PreparedKurKey, PreparedPool
from fleet.load.profiles import DevicePopulation
from fleet.names import NameSyntaxError, parse_name, parse_san

_NAMESPACE = uuid.UUID("6f1e0c1e-8d4b-4c1a-9a55-3e3f7f0b9d11")


class DeviceSetupError(FleetError):
    """A device template (subject, SAN pattern) that cannot be filled in."""


_FIELD_MAKERS: dict[str, Callable[[int], object]] = {
    "index": lambda index: index,
    "uuid": lambda index: uuid.uuid5(_NAMESPACE, str(index)),
    "imei": lambda index: f"35{index:013d}"[:15],
}


def _template_fields(templates: tuple[str, ...] | list[str]) -> list[str]:
    """The known fields the templates refer to (``{uuid}`` costs a SHA-1: compute it only when used).
    Unknown names are left out, so filling in the template raises KeyError as before."""
    used: set[str] = set()
    for template in templates:
        for _, name, _, _ in string.Formatter().parse(template):
            if name:
                used.add(re.split(r"[.\[]", name, maxsplit=1)[0])
    return [name for name in _FIELD_MAKERS if name in used]


class _NameTemplate:
    """An OpenSSL-style subject template (``/CN=nf-{index}/O=x``) split into its attributes once,
    so each device formats the values and skips re-parsing the whole name (and leaves out the
    uuid when the template does not use it). Used only when it gives the same ``x509.Name`` as ``parse_name`` for
    sample devices; otherwise every device goes through ``parse_name``.

    ``format_der`` writes the Name's DER directly (each attribute's OID and string type taken from
    a sample device's Name), for ``CertRequest(subject=bytes)``: no ``x509.Name`` built only to be
    encoded. It is used only when it gave ``parse_name``'s exact bytes for sample devices, and a
    device whose values cryptography might refuse (length, character set) gets None: the caller
    takes the ``x509.Name`` path, which raises what it always did."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.parts: list[tuple[x509.ObjectIdentifier, str]] | None = None
        self.der_parts: list[tuple[bytes, str, int, tuple[int, int]]] | None = None
        text = template.strip()
        if not text.startswith("/") or text == "/":
            return
        values = [part.partition("=")[2] for part in filter(None, text[1:].split("/"))]
        try:  # the OIDs, in order, from parse_name itself (placeholders dropped)
            attrs = list(parse_name(text.replace("{", "").replace("}", "")))
        except (NameSyntaxError, ValueError):
            return
        if len(attrs) == len(values):
            self.parts = [(a.oid, value) for a, value in zip(attrs, values)]

    def format(self, fields: dict[str, object]) -> x509.Name:
        if self.parts is None:
            return parse_name(self.template.format(**fields))
        return x509.Name([x509.NameAttribute(oid, value.format(**fields)) for oid, value in self.parts])

    def format_der(self, fields: dict[str, object]) -> bytes | None:
        """The Name's DER, or None where ``format`` must decide (see the class docstring)."""
        parts = self.der_parts
        if parts is None:
            return None
        rdns = []
        for oid_tlv, value, tag, (low, high) in parts:
            text = value.format(**fields)
            if tag == _UTF8_STRING:
                octets = text.encode("utf-8")
            elif text.isascii() and (tag != der.PRINTABLE_STRING or _PRINTABLE.issuperset(text)):
                octets = text.encode("ascii")
            else:
                return None
            n = len(octets)
            if not low <= n <= high:
                return None
            atv = len(oid_tlv) + 2 + n  # SET { SEQUENCE { OID, string } }, short lengths written inline
            if atv < 0x80:
                rdns.append(bytes((der.SET, atv + 2, der.SEQUENCE, atv)) + oid_tlv + bytes((tag, n)) + octets)
            else:
                rdns.append(der.set_of(der.sequence(oid_tlv, der.tlv(tag, octets))))
        body = b"".join(rdns)
        return bytes((der.SEQUENCE, len(body))) + body if len(body) < 0x80 else der.sequence(body)

    def prepare_der(self, samples: list[dict[str, object]]) -> None:
        """Enable ``format_der`` when it writes ``parse_name``'s exact DER for every sample."""
        if self.parts is None or not samples:
            return
        try:
            reference = self.format(samples[0]).public_bytes()
            atvs = [rdn.children()[0].children() for rdn in der.parse(reference).children()]
            if len(atvs) != len(self.parts) or any(len(atv) != 2 for atv in atvs):
                return
            self.der_parts = [
                (oid_tlv.raw, value, string.tag, _LENGTHS.get(oid.dotted_string, (1, 64)))
                for (oid, value), (oid_tlv, string) in zip(self.parts, atvs)
            ]
            if all(self.format_der(f) == parse_name(self.template.format(**f)).public_bytes() for f in samples):
                return
        except (der.DerError, NameSyntaxError, ValueError, KeyError, IndexError):
            pass
        self.der_parts = None

    def matches_parse_name(self, fields: dict[str, object]) -> bool:
        try:
            return self.format(fields) == parse_name(self.template.format(**fields))
        except (NameSyntaxError, ValueError):
            return False


_UTF8_STRING = 0x0C
_PRINTABLE = frozenset(string.ascii_letters + string.digits + " '()+,-./:=?")
# cryptography's length limits (octets) by OID; other attributes are held to 1..64 here (above
# that, the x509.Name path decides).
_LENGTHS = {"2.5.4.6": (2, 2), "1.3.6.1.4.1.311.60.2.1.3": (2, 2), "2.5.4.3": (1, 64)}


@dataclass(slots=True)
class DeviceCredentials:
    """What a device holds once enrolled."""

    key: PrivateKey | PreparedKey  # a prepared key becomes a key object when first signed with
    cert: bytes
    kur: PreparedKurKey | None = None  # the new key its next kur takes, prepared with its ir's record


class VendorCa:
    """A manufacturer CA that issues IDevID certificates to virtual devices on demand
    (TS 33.310 §9.2: base stations ship with a vendor key and certificate)."""

    cert: x509.Certificate  # declared: __init__ reads an issuer's before its own is set
    _aki: x509.AuthorityKeyIdentifier

    def __init__(
        self, key: ec.EllipticCurvePrivateKey | None = None, name: str = "fleet vendor root", *,
        issuer: VendorCa | None = None, path_length: int | None = 0,
    ) -> None:
        """A self-signed vendor root, or with ``issuer`` a vendor CA that ``issuer`` certifies
        (IDevIDs then chain through it: ``chain`` holds the vendor certificates above ``cert``)."""
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer else subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(issuer._aki, critical=False)
        self.cert = builder.sign(issuer.key if issuer else self.key, hashes.SHA256())
        self.chain: tuple[x509.Certificate, ...] = (issuer.cert, *issuer.chain) if issuer else ()
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    def idevid(self, serial_text: str, key: PrivateKey) -> x509.Certificate:
        now = datetime.now(UTC)
        subject = x509.Name([
            x509.NameAttribute(x509.NameOID.COMMON_NAME, f"IDevID {serial_text}"),
            x509.NameAttribute(x509.NameOID.SERIAL_NUMBER, serial_text),
        ])
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self.key, hashes.SHA256())
        )


def reference_names(spec: DevicePopulation, index: int, *, signed: bool = False) -> tuple[str, ...]:
    """The names a CA records as device ``index``'s reference (``Auth.reference``): its MAC
    senderKID as text, or its IDevID's CN for vendor devices; with ``signed`` (kur, cr signed
    with its certificate) also its subject's CN. What ``fleet run`` registers announcement URLs
    under."""
    if spec.auth == "vendor":
        names = [f"IDevID {index:08d}"]
    elif spec.reference is None:
        names = [f"dev-{index:08d}"]
    else:
        fields = {name: _FIELD_MAKERS[name](index) for name in _template_fields([spec.reference])}
        names = [parse_reference(spec.reference.format(**fields)).decode("utf-8", "replace")]
    if signed:
        fields = {name: _FIELD_MAKERS[name](index) for name in _template_fields([spec.subject])}
        cns = parse_name(spec.subject.format(**fields)).get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if cns and str(cns[0].value) not in names:
            names.append(str(cns[0].value))
    return tuple(names)


class DeviceFactory:
    """Builds each device's requests and protection from its index, lazily."""

    def __init__(
        self,
        spec: DevicePopulation,
        pools: dict[str, KeyPool],
        *,
        master_secret: bytes | None,
        trust: TrustStore,
        mode: str = "lcmpp",
        vendor: VendorCa | None = None,
        genm: tuple[str, ...] = ("caCerts",),
        seed: int = 1,
        prepared: PreparedPool | None = None,
    ) -> None:
        """``prepared``: ir and cr of the devices it holds take their CertRequest and POP from it."""
        self.spec = spec
        self.prepared = prepared
        self.pools = pools
        self.master_secret = master_secret
        self.trust = trust
        self._client_config: ClientConfig | None = None
        self.mode = mode
        self.vendor = vendor
        self.genm = genm
        self.states: dict[int, DeviceCredentials] = {}
        self._rng = np.random.default_rng(seed)
        # Local key types by name; a central one (RFC 9483 §4.1.6) as "central:<type>".
        self._kinds = [str(k) for k, _ in spec.key_types] + [f"central:{k}" for k, _ in spec.central_key_types]
        self._weights = np.array([w for _, w in (*spec.key_types, *spec.central_key_types)])
        self._central_algs = {f"central:{k}": key_algorithm(str(k)) for k, _ in spec.central_key_types}
        self._salt = self._rng.bytes(16)  # one PBM salt per worker: derived keys stay cached per device
        self._field_names = _template_fields([spec.subject, *spec.sans])
        self._index_only = self._field_names == ["index"]
        self._subject = _NameTemplate(spec.subject)
        self._mac_template: MacProtector | None = None  # copied per device, see mac()
        self._mac_copyable: bool | None = None  # None: not checked yet
        self._device_secret = None if master_secret is None else DeviceSecrets(master_secret)
        # The header fields the profile may set (RFC 9483 §3.1); None: fleet's defaults.
        self._reference = spec.reference
        self._sender = _NameTemplate(spec.sender) if spec.sender else None
        self._header_fields = _template_fields([t for t in (spec.reference, spec.sender) if t])
        # CA certificates seen in responses (issuing CAs): the chain kur and rr send (RFC 9483 §3.3).
        self._ca_certs: dict[bytes, x509.Certificate] = {}
        self._chains: dict[tuple[x509.Name, bytes | None], tuple[x509.Certificate, ...]] = {}
        self._vendor_chain: tuple[x509.Certificate, ...] | None = None
        # One cheap key type (the usual case): its generator, without the weighted draw.
        only = pools[self._kinds[0]] if len(self._kinds) == 1 and not self._central_algs else None
        self._only_generate = only.spec.generate if only is not None and only.spec.is_cheap else None
        self.check_templates()

    def check_templates(self) -> None:
        """Fill the templates once for device 0 so a typo fails before the run, not 50,000 times."""
        try:
            self.subject(0)
            self.sans(0)
            self.reference(0)
            self._sender_name(0)
            if self.spec.recipient is not None:
                parse_name(self.spec.recipient)
            samples = [self._fields(i) for i in (0, 1, 12_345)]
            if not all(self._subject.matches_parse_name(f) for f in samples):
                self._subject.parts = None  # the split template would not give what parse_name gives
            self._subject.prepare_der(samples)
        except (KeyError, IndexError, ValueError) as exc:
            raise DeviceSetupError(
                f"device subject/SAN/reference/sender template: {exc!r} (use {{index}}, {{uuid}}, {{imei}})"
            ) from None

    # -- identity -----------------------------------------------------------------------------

    def reference(self, index: int) -> bytes:
        """The device's senderKID: ``dev-%08d`` (what a CA deriving secrets from a master
        expects), or the profile's ``reference`` template filled in."""
        if self._reference is None:
            return b"dev-%08d" % index
        return parse_reference(self._reference.format(**self._header_values(index)))

    def _header_values(self, index: int) -> dict[str, object]:
        """The template fields the reference and sender templates use."""
        return {name: _FIELD_MAKERS[name](index) for name in self._header_fields}

    def _sender_name(self, index: int) -> bytes | None:
        """The profile's sender for MAC requests (DER), or None: the client names the
        reference (CN=dev-00000001), as RFC 9483 §3.1 asks."""
        if self._sender is None:
            return None
        return self._sender.format(self._header_values(index)).public_bytes()

    def _fields(self, index: int) -> dict[str, object]:
        """The template fields for device ``index`` (only those the templates use)."""
        if self._index_only:
            return {"index": index}
        return {name: _FIELD_MAKERS[name](index) for name in self._field_names}

    template_fields = _fields  # public: a prepared pool fills the templates once per device

    def subject(self, index: int, fields: dict[str, object] | None = None) -> x509.Name:
        return self._subject.format(self._fields(index) if fields is None else fields)

    def subject_der(self, index: int, fields: dict[str, object] | None = None) -> x509.Name | bytes:
        """The subject as DER where it can be written directly (see ``_NameTemplate``), else as
        ``subject()`` gives it; CertRequest takes either."""
        if fields is None:
            fields = self._fields(index)
        encoded = self._subject.format_der(fields)
        return self._subject.format(fields) if encoded is None else encoded

    def sans(self, index: int, fields: dict[str, object] | None = None) -> list[x509.GeneralName]:
        if not self.spec.sans:
            return []
        if fields is None:
            fields = self._fields(index)
        return [parse_san(s.format(**fields)) for s in self.spec.sans]

    # -- credentials --------------------------------------------------------------------------

    def new_key(self) -> PrivateKey | bytes:
        """A fresh key of a type drawn by the profile's weights. EC and EdDSA keys are generated
        on the spot (cheaper than loading one from a pool); RSA keys, thousands of times dearer
        to make, come from the pre-generated pool (bench/README.md has the figures).
        A central key type drawn gives the AlgorithmIdentifier to ask the CA for instead (central
        key generation)."""
        if self._only_generate is not None:
            return self._only_generate()
        kind = self._kinds[0] if len(self._kinds) == 1 else self._kinds[int(self._rng.choice(len(self._kinds), p=self._weights))]
        central = self._central_algs.get(kind)
        if central is not None:
            return central
        pool = self.pools[kind]
        if pool.spec.is_cheap:
            return pool.spec.generate()
        return pool.take()

    def mac(self, index: int) -> MacProtector:
        if self.master_secret is None:
            raise DeviceSetupError("MAC devices need a master secret")
        # self.reference(index), inlined for the default (per enrollment)
        reference = b"dev-%08d" % index if self._reference is None else self.reference(index)
        sender = None if self._sender is None else self._sender_name(index)
        assert self._device_secret is not None
        secret = self._device_secret(reference)
        if self._mac_copyable is None:
            self._mac_template = self._new_mac(secret, reference)
            self._mac_copyable = self._copy_is_faithful(self._mac_template)
        if not self._mac_copyable:
            return self._new_mac(secret, reference, sender)
        # Every device of this worker shares the salt and iterations, so the encoded PBM
        # AlgorithmIdentifier is the same: the template's, with this device's secret.
        assert self._mac_template is not None
        return self._mac_template.with_secret(secret, reference, sender)

    PREPARED_MACS = 60_000  # below the process's derived-key and HMAC-pad caches (65,536 each)

    def prepare_macs(self, indices: range) -> int:
        """Derive the MAC keys of devices ``indices`` now, before the run (at most
        ``PREPARED_MACS``): a device's key depends on its secret and the worker's salt only, not
        on the transaction, and the process keeps derived keys, so its first message then only
        MACs. Returns how many were derived. MAC devices only; the others have nothing to derive."""
        if self.master_secret is None or self.spec.auth != "mac":
            return 0
        chosen = indices[: self.PREPARED_MACS]
        for index in chosen:
            self.mac(index).protect(b"")
        return len(chosen)

    def _new_mac(self, secret: bytes, reference: bytes, sender: bytes | None = None) -> MacProtector:
        return MacProtector(
            secret, reference=reference, iterations=self.spec.pbm_iterations, salt=self._salt, sender_name=sender
        )

    def _copy_is_faithful(self, template: MacProtector) -> bool:
        """Whether a copy with another secret is exactly what the constructor gives (same MAC,
        algorithm and reference, and the template's secret kept nowhere in it). Checked once, so
        a change inside MacProtector falls back to constructing each protector."""
        secret, reference = template.secret + b"-probe", (template.sender_kid or b"") + b"-probe"
        try:
            copy = template.with_secret(secret, reference)
            fresh = self._new_mac(secret, reference)
            return (
                copy.protect(b"probe") == fresh.protect(b"probe")
                and copy.secret == secret
                and copy.algorithm == fresh.algorithm
                and copy.sender_kid == fresh.sender_kid
                and template.secret not in [v for v in vars(copy).values() if isinstance(v, bytes)]
            )
        except (AttributeError, TypeError):
            return False

    @property
    def client_config(self) -> ClientConfig:
        """The ClientConfig every device shares; each transaction brings its device's protector."""
        if self._client_config is None:
            spec = self.spec
            recipient = {"recipient": directory_name(parse_name(spec.recipient).public_bytes())} if spec.recipient else {}
            self._client_config = ClientConfig(
                None, self.trust, mode=self.mode,  # type: ignore[arg-type]
                message_time=spec.message_time, max_iterations=spec.max_iterations, **recipient,  # type: ignore[arg-type]
            )
        return self._client_config

    # -- requests -----------------------------------------------------------------------------

    def request(
        self, op: str, index: int
    ) -> tuple[MacProtector | SignatureProtector, Request, PrivateKey | PreparedKey | None]:
        """(protector, request, new key or None) for one operation of device ``index``; the
        transaction runs with ``client_config`` and that protector."""
        state = self.states.get(index)
        spec = self.spec
        key: PrivateKey | None  # None: a central key (the KGA makes it)
        request: Request
        if op == "genm":
            items = tuple(self._genm_item(name) for name in self.genm)
            protector: MacProtector | SignatureProtector = self._signed(state) if state else self.mac(index)
            return protector, GeneralRequest(items), None
        if op in ("kur", "rr"):
            if state is None:
                raise DeviceSetupError(f"{op} needs an enrolled device")
            cert = load_cert(state.cert)
            if op == "rr":
                return self._signed(state), RevocationRequest.for_certificate(cert, 1), None
            prepared_kur = self.prepared.kur_key(state) if self.prepared is not None and self.prepared.kur else None
            if prepared_kur is not None:  # the key and its SPKI made ahead; the CertRequest and POP now
                key, central, new_spki = prepared_kur.load(), None, prepared_kur.spki
            else:
                (key, central), new_spki = _split(self.new_key()), None
            request = CertRequest(
                BodyType.KUR, key, old_cert=cert, implicit_confirm=spec.implicit_confirm, cert_profile=spec.cert_profile,
                central_key_alg=central, new_spki=new_spki,
            )
            return self._signed(state), request, key
        kind = BodyType.CR if op == "cr" else BodyType.IR
        prepared = self._prepared(op, kind, index)
        if prepared is not None:
            request, prepared_key = prepared
            return self._protector(kind, state, index), request, prepared_key
        key, central = _split(self.new_key())
        fields = self._fields(index)
        sans = self.sans(index, fields)
        if op == "p10cr":
            assert key is not None  # profiles refuse p10cr with central key types
            csr_builder = x509.CertificateSigningRequestBuilder().subject_name(self.subject(index, fields))
            if sans:
                csr_builder = csr_builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            csr = csr_builder.sign(key, _csr_hash(key))
            return self.mac(index), CsrRequest(csr, spec.implicit_confirm, spec.cert_profile), key
        request = CertRequest(
            kind, key, self.subject_der(index, fields), sans, implicit_confirm=spec.implicit_confirm, cert_profile=spec.cert_profile,
            central_key_alg=central,
        )
        return self._protector(kind, state, index), request, key

    def _prepared(self, op: str, kind: BodyType, index: int) -> tuple[PreparedCertRequest, PreparedKey] | None:
        """Device ``index``'s prepared ir or cr, when the pool has one for it still unused."""
        if self.prepared is None or op not in ("ir", "cr"):
            return None
        spec = self.spec
        return self.prepared.request(index, kind, implicit_confirm=spec.implicit_confirm, cert_profile=spec.cert_profile)

    def _protector(self, kind: BodyType, state: DeviceCredentials | None, index: int) -> MacProtector | SignatureProtector:
        """An ir's or cr's protection: a cr of an enrolled device signs with its certificate's key,
        a vendor device with its IDevID, the others MAC with their secret."""
        if kind is BodyType.CR and state is not None:
            return self._signed(state)
        if self.spec.auth == "vendor" and self.vendor is not None:
            return self._vendor_signed(index)
        return self.mac(index)

    def _signed(self, state: DeviceCredentials) -> SignatureProtector:
        cert = load_cert(state.cert)
        if isinstance(state.key, PreparedKey):  # made into a key object once, when first needed
            state.key = state.key.load()
        return SignatureProtector(state.key, cert, self._chain_of(cert))

    def _chain_of(self, cert: x509.Certificate) -> tuple[x509.Certificate, ...]:
        """The chain of a certificate the CA issued, from the CA certificates its responses
        carried and the trust anchors (``signer_chain``); found once per issuing CA."""
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        key = (cert.issuer, aki)
        chain = self._chains.get(key)
        if chain is None:
            chain = signer_chain(cert, [*self._ca_certs.values(), *self.trust.anchors])
            if chain or len(self._chains) < 64:  # an unknown issuer is asked again once its CA is seen
                self._chains[key] = chain
        return chain

    def _vendor_signed(self, index: int) -> SignatureProtector:
        assert self.vendor is not None
        idevid_key = ec.generate_private_key(ec.SECP256R1())
        cert = self.vendor.idevid(f"{index:08d}", idevid_key)
        if self._vendor_chain is None:  # every IDevID has the same issuer: its chain is built once
            self._vendor_chain = signer_chain(cert, [self.vendor.cert, *self.vendor.chain])
        return SignatureProtector(idevid_key, cert, self._vendor_chain)

    def _genm_item(self, name: str) -> InfoTypeAndValue:
        if name == "caCerts":
            return genm_items.ca_certs_request()
        if name == "rootCaCert":
            anchors = self.trust.anchors
            return genm_items.root_ca_cert_request(cert_der(anchors[0]) if anchors else None)
        if name == "certReqTemplate":
            return genm_items.cert_req_template_request()
        anchors = self.trust.anchors
        issuer = anchors[0].subject.public_bytes() if anchors else x509.Name([]).public_bytes()
        return genm_items.crl_status_list_request(issuer)

    # -- results ------------------------------------------------------------------------------

    def enrolled(self, index: int, key: PrivateKey | PreparedKey, cert: bytes, chain: tuple[bytes, ...] = ()) -> None:
        """Device ``index`` now holds ``cert``; ``chain`` is the response's other extraCerts,
        whose CA certificates are kept once for the whole fleet (see ``_chain_of``)."""
        kur = None
        if isinstance(key, PreparedKey):  # the record's kur key moves to the device, for its next kur
            kur, key.kur = key.kur, None
        self.states[index] = DeviceCredentials(key, cert, kur)
        known = self._ca_certs
        for der_bytes in chain:
            if der_bytes not in known and len(known) < 64:
                ca = load_cert(der_bytes)
                if _is_ca(ca):
                    known[der_bytes] = ca
                    self._chains = {k: v for k, v in self._chains.items() if v}  # retry the unknown issuers

    def revoked(self, index: int) -> None:
        self.forget(index)

    def forget(self, index: int) -> None:
        """Drop what a device holds, so only devices inside a flow cost memory."""
        self.states.pop(index, None)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


_CsrHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
_HASHES: dict[str, Callable[[], _CsrHash]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def _csr_hash(key: PrivateKey) -> _CsrHash | None:
    """The hash RFC 9481 pairs with the key (none for EdDSA)."""
    name = default_hash(key)
    return None if name is None else _HASHES[name]()


def _split(drawn: PrivateKey | bytes) -> tuple[PrivateKey | None, bytes | None]:
    """(local key, None) or (None, the AlgorithmIdentifier a central key is asked with)."""
    return (None, drawn) if isinstance(drawn, bytes) else (drawn, None)
