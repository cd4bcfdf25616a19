"""Prepared-device pools: each device's key, CertRequest and POP made before the run.

An ir's CertRequest and its signature POP do not depend on the transaction (``fleet.cmp.requests
.PreparedCertRequest``), so they can be made ahead, on every core, and cached like RSA key
pools; a worker then only frames, protects, sends and checks. A pool belongs to one device
identity: the key type and the subject and SAN templates of a profile's ``[devices]``. Entry
*i* is device *i*'s.

In memory a pool is one bytes buffer of records and an offset table (``PreparedPool``); a record
holds the private key, the SubjectPublicKeyInfo's place in the CertRequest, the POP
signature and the CertRequest. No key object exists until a device signs with its key
(``PreparedKey.load``), which a plain ir never does; an EC key is kept as its SEC 1 DER, which
holds the public key too, so that costs what loading a pool key costs, not a scalar multiplication.

When the profile's flow has a kur, a pool's identity says so and each record also holds the kur's
new key (kept like the ir's) and its SubjectPublicKeyInfo: the key and the SPKI are made ahead,
while the kur's CertRequest and its POP are made live, because the CertRequest carries the
oldCertID control (RFC 9483 §4.1.3, RFC 4211 §6.5), known only once the ir's certificate is, and
the POP signs that CertRequest (RFC 9810 §5.2.8). The kur key travels with the ir's record: a
device that took record *i* at its ir updates to record *i*'s kur key, once.

File format (``<dir>/prepared/<name>.prep``), integers big-endian::

    magic      8 bytes  b"FLEETPD" + version byte: 0x01 records without a kur key, 0x02 with one
    used       u64      watermark: devices 0..used-1 were issued from this pool (a run claims
                        them before it starts, so a crash leaves them marked)
    used_crc   u32      CRC-32 of ``used`` (a garbled watermark is refused, not trusted)
    meta_len   u32
    meta       JSON     identity (key_type, subject, sans), count, created
    digest     32 bytes SHA-256 over meta, offsets and records
    offsets    (count + 1) x u64, record boundaries from 0
    records    count x (u8 key_len, u16 spki_offset, u16 spki_length, u8 sig_len, key (EC: SEC 1
               DER; EdDSA: raw), signature, CertRequest); version 0x02: u8 kur_key_len, u8
               kur_spki_len after sig_len, and the kur key and its SPKI after the signature

A pool is written whole (temporary file, fsync, rename) and never changed afterwards except for
its watermark. A run with ``prepared = true`` uses only a pool nobody has used, and within the run
a device that comes round again gets a new key (prepared by a helper process, ``fleet.load.refill``,
or made live): no key is certified twice. ``prepared =
"reuse"`` takes any matching pool, used or not, and lets devices repeat their key (a CA's
key-reuse checks are then what is being tested, or deliberately not). Keys are throwaway test
identities, unencrypted in 0600 files under a 0700 directory; nothing here prints key material.
"""

from __future__ import annotations

import hashlib
import json
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)

from fleet.cmp import der
from fleet.cmp.oids import EC_PUBLIC_KEY
from fleet.cmp.protection import Signer, default_hash
from fleet.cmp.requests import PreparedCertRequest, prepare_cert_request, spki_at, spki_der
from fleet.errors import FleetError
from fleet.keytypes import KeySpec, PrivateKey

if TYPE_CHECKING:
    from fleet.cmp.messages import BodyType
    from fleet.load.profiles import DevicePopulation

    _Offsets = array[int]
else:
    _Offsets = array


class PreparedPoolError(FleetError):
    """A prepared pool that is missing, damaged, used up or does not fit the profile."""


_RECORD = struct.Struct(">BHHB")  # key_len, spki_offset, spki_length, sig_len
_KUR_RECORD = struct.Struct(">BHHBBB")  # the same, then kur_key_len, kur_spki_len
PREPARED_TYPES = ("ec", "ed25519", "ed448")
_EC_PUBLIC_KEY_OID = der.oid(EC_PUBLIC_KEY)
_ECDSA: dict[str, ec.ECDSA] = {}  # by curve name
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}
_SEC1_LAYOUT: dict[str, tuple[int, bytes, int]] = {}  # curve: SEC 1 length, SPKI prefix, public key TLV length


# -- identity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """What a pool's entries depend on: the key type, the subject and SAN templates, and whether
    each record carries a kur's new key (the profile's flow has a kur)."""

    key_type: str
    subject: str
    sans: tuple[str, ...]
    kur: bool = False

    @classmethod
    def of(cls, devices: DevicePopulation, *, kur: bool = False) -> Identity:
        """The identity of a profile's devices; one local EC or EdDSA key type only. ``kur``:
        the flow has a kur (see ``flow_has_kur``)."""
        if len(devices.key_types) != 1 or devices.central_key_types:
            raise PreparedPoolError("[devices].prepared needs exactly one key type, generated by the device")
        spec = devices.key_types[0][0]
        if spec.algorithm not in PREPARED_TYPES:
            raise PreparedPoolError(f"[devices].prepared holds EC or EdDSA devices, not {spec} (RSA keys have their own pool)")
        return cls(str(spec), devices.subject, tuple(devices.sans), kur)

    @property
    def tag(self) -> str:
        fields: list[object] = [self.key_type, self.subject, list(self.sans)]
        text = json.dumps([*fields, "kur"] if self.kur else fields)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return " ".join([self.key_type, self.subject, *self.sans, *(["(with kur keys)"] if self.kur else [])])


def flow_has_kur(flow: Sequence[str]) -> bool:
    """Whether a run's records need a kur key each."""
    return "kur" in flow


# -- keys -------------------------------------------------------------------------------------


def key_bytes(key: PrivateKey) -> tuple[bytes, bytes]:
    """(what a record keeps of the private key, the key's SubjectPublicKeyInfo): for EC its SEC 1
    ECPrivateKey DER, which carries the public key, so loading it later costs no scalar
    multiplication and the SPKI is read from it; for EdDSA the raw private key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sec1 = key.private_bytes(Encoding.DER, PrivateFormat.TraditionalOpenSSL, NoEncryption())
        layout = _SEC1_LAYOUT.get(key.curve.name)
        if layout is not None and len(sec1) == layout[0]:  # the curve's one fixed-length encoding
            return sec1, layout[1] + sec1[-layout[2] :]
        parts = der.parse(sec1).children()
        if len(parts) == 4 and parts[2].tag == 0xA0 and parts[3].tag == 0xA1:  # parameters [0], publicKey [1]
            algorithm = der.sequence(_EC_PUBLIC_KEY_OID, parts[2].unwrap().raw)
            bit_string = parts[3].unwrap().raw
            spki = der.sequence(algorithm, bit_string)
            if sec1.endswith(bit_string) and spki.endswith(bit_string):
                # SEC 1 ends with the public key's BIT STRING, and so does the SPKI: for this
                # curve's (fixed) lengths the SPKI is a fixed prefix and the SEC 1 tail
                _SEC1_LAYOUT[key.curve.name] = (len(sec1), spki[: -len(bit_string)], len(bit_string))
            return sec1, spki
        return sec1, spki_der(key)
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return key.private_bytes_raw(), spki_der(key)
    raise PreparedPoolError(f"prepared pools hold EC or EdDSA keys, not {type(key).__name__}")


def key_from_bytes(spec: KeySpec, stored: bytes) -> PrivateKey:
    """The key object of what ``key_bytes`` kept."""
    if spec.algorithm == "ec":
        key = load_der_private_key(stored, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key
    if spec.algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(stored)
    return ed448.Ed448PrivateKey.from_private_bytes(stored)


class PreparedKey:
    """A prepared device's private key, made into a key object only when the device signs with
    it (kur, rr or a cr after the ir): a plain ir never needs one. ``kur``: the same record's kur
    key, which the device's next kur takes (once), or None."""

    __slots__ = ("kur", "raw", "spec")

    def __init__(self, spec: KeySpec, raw: bytes, kur: PreparedKurKey | None = None) -> None:
        self.spec = spec
        self.raw = raw
        self.kur = kur

    def load(self) -> PrivateKey:
        return key_from_bytes(self.spec, self.raw)

    def __repr__(self) -> str:
        return f"<PreparedKey {self.spec}>"  # never the key


class PreparedKurKey:
    """A kur's new key made ahead and its SubjectPublicKeyInfo; the kur's CertRequest and POP
    are made live (they cover the oldCertID control)."""

    __slots__ = ("raw", "spec", "spki")

    def __init__(self, spec: KeySpec, raw: bytes, spki: bytes) -> None:
        self.spec = spec
        self.raw = raw
        self.spki = spki

    def load(self) -> PrivateKey:
        return key_from_bytes(self.spec, self.raw)

    def __repr__(self) -> str:
        return f"<PreparedKurKey {self.spec}>"  # never the key


# -- records ----------------------------------------------------------------------------------


def make_record(key: PrivateKey, subject: bytes | None, sans: Sequence[x509.GeneralName],
                kur_key: PrivateKey | None = None) -> bytes:
    """One device's record (see the module docstring); with ``kur_key``, a version 0x02 record
    that carries it and its SPKI too."""
    raw, spki = key_bytes(key)
    sign = None
    if isinstance(key, ec.EllipticCurvePrivateKey):  # Signer's choice of hash, kept per curve
        ecdsa = _ECDSA.get(key.curve.name)
        if ecdsa is None:
            ecdsa = _ECDSA[key.curve.name] = ec.ECDSA(_HASHES[default_hash(key) or "sha256"]())
        sign = partial(key.sign, signature_algorithm=ecdsa)
    parts = prepare_cert_request(key, subject, sans, spki, sign)
    if kur_key is None:
        head = _RECORD.pack(len(raw), parts.spki_offset, parts.spki_length, len(parts.signature))
        return head + raw + parts.signature + parts.cert_request
    kur_raw, kur_spki = key_bytes(kur_key)
    head = _KUR_RECORD.pack(len(raw), parts.spki_offset, parts.spki_length, len(parts.signature), len(kur_raw),
                            len(kur_spki))
    return head + raw + parts.signature + kur_raw + kur_spki + parts.cert_request


class PreparedPool:
    """Prepared entries for devices ``start..start+len-1``, handed out by device index.

    With ``reuse`` False an entry is handed out once; a device that comes round again gets one
    from ``refill`` (a helper process preparing devices in the order arrivals reach them, see
    ``fleet.load.refill``) or None, and makes its key live. ``taken`` and ``missed`` count both;
    with ``kur`` (records carry a kur key) ``kur_taken`` and ``kur_missed`` count the kurs that
    took the prepared key and those that made theirs live.
    """

    __slots__ = ("_algorithm", "_blob", "_offsets", "_spec", "_taken", "kur", "kur_missed", "kur_taken", "missed",
                 "refill", "reuse", "start", "taken")

    def __init__(self, spec: KeySpec, blob: bytes, offsets: _Offsets, start: int = 0, *, reuse: bool = False,
                 kur: bool = False) -> None:
        self._spec = spec
        self._blob = blob
        self._offsets = offsets
        self.start = start
        self.reuse = reuse
        self.kur = kur
        self._taken = bytearray(len(offsets) - 1)
        self.taken = 0
        self.missed = 0  # devices that came round again (or were outside the pool) and made a key live
        self.kur_taken = 0
        self.kur_missed = 0
        self._algorithm = Signer(spec.generate()).algorithm
        self.refill: RecordSource | None = None

    @classmethod
    def from_records(cls, spec: KeySpec, records: list[bytes], start: int = 0, *, reuse: bool = False,
                     kur: bool = False) -> PreparedPool:
        offsets = array("Q", [0])
        total = 0
        for r in records:
            total += len(r)
            offsets.append(total)
        return cls(spec, b"".join(records), offsets, start, reuse=reuse, kur=kur)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def spec(self) -> KeySpec:
        return self._spec

    def memory_bytes(self) -> int:
        """The pool's own memory: its buffer, its offset table and the taken flags."""
        return len(self._blob) + self._offsets.itemsize * len(self._offsets) + len(self._taken)

    def request(
        self, index: int, kind: BodyType, *, implicit_confirm: bool = False, cert_profile: str | None = None
    ) -> tuple[PreparedCertRequest, PreparedKey] | None:
        """Device ``index``'s prepared request and key (with the record's kur key, if it has one),
        or None: no entry for it, or (without reuse) its entry was handed out already and the
        refill has none for it yet."""
        i = index - self.start
        if 0 <= i < len(self._taken) and (not self._taken[i] or self.reuse):
            self._taken[i] = 1
            record, lo, hi = self._blob, self._offsets[i], self._offsets[i + 1]
        else:
            spare = self.refill.take(index) if self.refill is not None else None
            if spare is None:
                self.missed += 1
                return None
            record, lo, hi = spare, 0, len(spare)
        self.taken += 1
        kur = None
        if self.kur:
            key_len, spki_offset, spki_length, sig_len, kur_len, kur_spki_len = _KUR_RECORD.unpack_from(record, lo)
            pos = lo + _KUR_RECORD.size
        else:
            key_len, spki_offset, spki_length, sig_len = _RECORD.unpack_from(record, lo)
            pos = lo + _RECORD.size
        raw = record[pos : pos + key_len]
        pos += key_len
        signature = record[pos : pos + sig_len]
        pos += sig_len
        if self.kur:
            kur = PreparedKurKey(self._spec, record[pos : pos + kur_len], record[pos + kur_len : pos + kur_len + kur_spki_len])
            pos += kur_len + kur_spki_len
        cert_request = record[pos:hi]
        spki = spki_at(cert_request, spki_offset, spki_length)
        request = PreparedCertRequest(kind, cert_request, self._algorithm, signature, spki, None,
                                      implicit_confirm, cert_profile)
        return request, PreparedKey(self._spec, raw, kur)

    def kur_key(self, holder: _HoldsKurKey) -> PreparedKurKey | None:
        """The prepared kur key ``holder`` (a device's credentials) got with its ir's record,
        handed out once: the device keeps it no longer. None when it has none (its ir made its
        key live, or it updated already); counted either way."""
        kur = holder.kur
        if kur is None:
            self.kur_missed += 1
            return None
        holder.kur = None
        self.kur_taken += 1
        return kur


class _HoldsKurKey(Protocol):
    kur: PreparedKurKey | None


class RecordSource(Protocol):
    """Records of devices coming round again, made while the run goes (``fleet.load.refill``)."""

    def take(self, index: int) -> bytes | None: ...
