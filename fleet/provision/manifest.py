"""The device manifest of ``fleet provision``: CSV (with a header row) or JSON Lines.

Every row is checked before anything is sent: names and SANs parse, the authentication is
complete and readable (secret source, IDevID certificate and key), the key type is known or the
CSR verifies, and ids are unique and usable as folder names. Problems name the line, the field
and why; all of them are collected so one run of ``--dry-run`` shows the whole list.

Columns (all lower-case; empty cells are absent)::

    id            device id: letters, digits, '.', '_', '-' (the output folder's name)
    subject       /CN=a/O=b or CN=a,O=b                       (subject and/or sans required)
    sans          DNS:host, IP:addr, URI:..., email:a@b, RID:1.2.3; comma or space separated
    ref, secret   MAC authentication: reference (senderKID; default: id; hex:0a1b.. for binary)
                  and the secret's pass:/env:/file: source
    cert, key     signature authentication with a vendor (IDevID) certificate (certificates
                  after it in its PEM: its chain) and its key
    key_pass      passphrase source of ``key``;  chain: certificates sent after the chain
    key_type      key to generate: ec:P-256 (default), ec:P-384, ed25519, rsa:2048 ...
    central_key   key type the CA generates instead (central key generation, RFC 9483 §4.1.6):
                  ec:P-256, rsa:2048, ed25519 ...; delivered encrypted, stored as key.pem
    csr           PKCS#10 request: p10cr, the device keeps its own key (no key_type)
    csr_key       optional: the CSR's private key, used only to sign rr for an orphan
    profile       CMP profile name: requests go to <server path>/p/<profile>/<operation>
    path          request path replacing the server URL's path (e.g. /.well-known/cmp/p/x)
    cert_profile  certProfile put in generalInfo (RFC 9483 §4.1.1)
    sender        header sender with MAC (default: ref when it is a name, else CN=<ref>)
    recipient     header recipient name (default: the NULL-DN)
    message_time  false: no messageTime in the header (default true)
    max_iterations  cap on a MAC response's iteration count (default: PBMAC1 1000000, PBM 100000)

Relative file paths are taken from the manifest's folder. The chain of ``cert`` sent in
extraCerts (RFC 9483 §3.3) is built from its file, ``chain`` and ``--trusted``, without a
self-signed root; ``chain`` certificates follow it as given.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from fleet.cmp.messages import directory_name
from fleet.cmp.protection import MacProtector, PrivateKey, SignatureProtector, parse_reference
from fleet.cmp.trust import signer_chain
from fleet.errors import FleetError
from fleet.files import load_certificates, load_csr, load_private_key
from fleet.keys import KeySpec
from fleet.names import parse_name, parse_sans
from fleet.secrets import read_secret

__all__ = [
    "COLUMNS",
    "CertAuth",
    "DeviceSpec",
    "MacAuth",
    "ManifestError",
    "Problem",
    "load_manifest",
    "parse_manifest",
]

COLUMNS = (
    "id", "subject", "sans", "ref", "secret", "cert", "key", "key_pass", "chain",
    "key_type", "central_key", "csr", "csr_key", "profile", "path", "cert_profile", "sender", "recipient", "message_time",
    "max_iterations",
)  # fmt: skip
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
DEFAULT_KEY_TYPE = "ec:P-256"


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    why: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.why}"


class ManifestError(FleetError):
    """A manifest with one or more bad rows; ``problems`` lists each (line, field, why)."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"manifest {source}: {problems[0]}{more}")


@dataclass(frozen=True)
class MacAuth:
    """MAC protection with a shared secret; the secret never shows in a repr."""

    reference: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class CertAuth:
    """Signature protection with a vendor (IDevID) certificate; the key never shows in a repr.
    ``chain`` (the column) is sent as given; ``pool`` (the rest of the ``cert`` file) only
    supplies the chain's certificates."""

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()
    pool: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class DeviceSpec:
    """One checked manifest row. ``fingerprint`` changes when anything about the row changes."""

    id: str
    line: int
    subject: x509.Name | None
    sans: tuple[x509.GeneralName, ...]
    auth: MacAuth | CertAuth
    key_type: KeySpec | None  # None for p10cr and central key generation
    csr: x509.CertificateSigningRequest | None = None
    csr_key: PrivateKey | None = field(default=None, repr=False)
    profile: str | None = None
    path: str | None = None
    cert_profile: str | None = None
    sender: x509.Name | None = None
    recipient: x509.Name | None = None
    message_time: bool = True
    max_iterations: int | None = None
    central_key: KeySpec | None = None  # the CA generates a key of this type
    fingerprint: str = ""

    @property
    def operation(self) -> str:
        return "p10cr" if self.csr is not None else "ir"

    @property
    def auth_kind(self) -> str:
        return "mac" if isinstance(self.auth, MacAuth) else "idevid"

    def protector(self, trusted: tuple[x509.Certificate, ...] = ()) -> MacProtector | SignatureProtector:
        """How this device protects its requests: MAC with its reference (and sender, when the
        row names one), or its IDevID with the chain built from its files and ``trusted``."""
        auth = self.auth
        if isinstance(auth, MacAuth):
            sender = self.sender.public_bytes() if self.sender is not None else None
            return MacProtector(auth.secret, reference=parse_reference(auth.reference), sender_name=sender)
        chain = signer_chain(auth.certificate, [*auth.pool, *auth.chain, *trusted], extra=auth.chain)
        return SignatureProtector(auth.key, auth.certificate, chain)

    def header_fields(self) -> dict[str, object]:
        """The row's ClientConfig header settings (recipient, messageTime, iteration cap)."""
        fields: dict[str, object] = {"message_time": self.message_time, "max_iterations": self.max_iterations}
        if self.recipient is not None:
            fields["recipient"] = directory_name(self.recipient.public_bytes())
        return fields


def load_manifest(path: Path | str) -> list[DeviceSpec]:
    """Read and check a manifest file (``.jsonl``/``.json`` as JSON Lines, else CSV)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ManifestError(str(path), [Problem(0, "file", str(why))]) from None
    kind = "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"
    return parse_manifest(text, kind=kind, base=path.parent, source=str(path))


def parse_manifest(
    text: str, *, kind: str = "csv", base: Path = Path("."), source: str = "<manifest>"
) -> list[DeviceSpec]:
    problems: list[Problem] = []
    rows = list(_rows_jsonl(text, problems) if kind == "jsonl" else _rows_csv(text, problems))
    devices: list[DeviceSpec] = []
    seen: dict[str, int] = {}
    cache: dict[tuple[str, ...], object] = {}
    for line, row in rows:
        before = len(problems)
        spec = _device(line, row, base, problems, cache)
        if spec is None or len(problems) > before:
            continue
        if spec.id in seen:
            problems.append(Problem(line, "id", f"duplicate id {spec.id!r} (first on line {seen[spec.id]})"))
            continue
        seen[spec.id] = line
        devices.append(spec)
    if not problems and not devices:
        problems.append(Problem(0, "file", "no devices"))
    if problems:
        raise ManifestError(source, problems)
    return devices


# -- row sources ----------------------------------------------------------------------------------


def _rows_csv(text: str, problems: list[Problem]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    header_line = 0
    try:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in cells]
                header_line = start
                unknown = [c for c in header if c not in COLUMNS]
                if unknown:
                    problems.append(Problem(start, "header", f"unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})"))
                if "id" not in header:
                    problems.append(Problem(start, "header", "no 'id' column"))
                if unknown or "id" not in header:
                    return  # rows cannot be read against a bad header
                continue
            if len(cells) > len(header):
                problems.append(Problem(start, "row", f"{len(cells)} cells but the header on line {header_line} has {len(header)}"))
                continue
            yield start, {k: v.strip() for k, v in zip(header, cells) if v.strip()}
    except csv.Error as exc:
        problems.append(Problem(reader.line_num, "row", f"CSV syntax: {exc}"))


def _rows_jsonl(text: str, problems: list[Problem]) -> Iterator[tuple[int, dict[str, str]]]:
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, "row", f"JSON syntax: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(number, "row", "a JSON object is expected"))
            continue
        row: dict[str, str] = {}
        for key, value in obj.items():
            name = str(key).lower()
            if name not in COLUMNS:
                problems.append(Problem(number, name, f"unknown field (known: {', '.join(COLUMNS)})"))
                continue
            if isinstance(value, list) and name == "sans":
                value = ",".join(str(v) for v in value)
            if value is None or value == "":
                continue
            if not isinstance(value, (str, int)):
                problems.append(Problem(number, name, "must be a string"))
                continue
            row[name] = str(value).strip()
        yield number, row


# -- one row --------------------------------------------------------------------------------------


def _device(
    line: int, row: dict[str, str], base: Path, problems: list[Problem], cache: dict[tuple[str, ...], object]
) -> DeviceSpec | None:
    def bad(name: str, why: str) -> None:
        problems.append(Problem(line, name, why))

    device_id = row.get("id", "")
    if not device_id:
        bad("id", "missing")
        return None
    if not _ID.fullmatch(device_id):
        bad("id", f"{device_id!r} must be 1-128 letters, digits, '.', '_' or '-' and not start with '.' or '-'")
        return None

    subject = None
    if "subject" in row:
        try:
            subject = parse_name(row["subject"])
        except FleetError as exc:
            bad("subject", str(exc))
    sans: list[x509.GeneralName] = []
    if "sans" in row:
        try:
            sans = parse_sans(row["sans"])
        except FleetError as exc:
            bad("sans", str(exc))

    auth = _auth(row, base, bad, cache, device_id)

    key_type: KeySpec | None = None
    central_key: KeySpec | None = None
    csr = None
    csr_key = None
    if "central_key" in row:
        for other in ("csr", "key_type"):
            if other in row:
                bad(other, "not with central_key: the CA generates the key")
        try:
            central_key = KeySpec.parse(row["central_key"])
            if central_key.algorithm not in ("ec", "rsa", "ed25519"):
                bad("central_key", f"central key generation of {central_key} is not supported (ec, rsa, ed25519)")
        except FleetError as exc:
            bad("central_key", str(exc))
        if subject is None and not sans and "subject" not in row:
            bad("subject", "give subject and/or sans")
    elif "csr" in row:
        if "key_type" in row:
            bad("key_type", "not with csr: the device keeps the key of its CSR")
        try:
            csr = load_csr(_path(base, row["csr"]))
            if not csr.is_signature_valid:
                bad("csr", "the CSR's signature does not verify")
        except FleetError as exc:
            bad("csr", str(exc))
        if "csr_key" in row:
            csr_key = _load_key(row, "csr_key", None, base, bad, cache)
            if csr is not None and csr_key is not None and _spki(csr_key.public_key()) != _spki(csr.public_key()):
                bad("csr_key", "is not the key of the CSR")
        if csr is not None and subject is None and not sans and not len(csr.subject):
            bad("subject", "the CSR has no subject and no subject is given")
    else:
        if "csr_key" in row:
            bad("csr_key", "only with csr")
        try:
            key_type = KeySpec.parse(row.get("key_type", DEFAULT_KEY_TYPE))
        except FleetError as exc:
            bad("key_type", str(exc))
        if subject is None and not sans and "subject" not in row:
            bad("subject", "give subject and/or sans")

    header = _header(row, auth, bad)
    profile = row.get("profile")
    if profile is not None and not _SEGMENT.fullmatch(profile):
        bad("profile", f"{profile!r} must be letters, digits, '.', '_', '~' or '-'")
    path = row.get("path")
    if path is not None and (not path.startswith("/") or not path.isascii() or " " in path):
        bad("path", f"{path!r} must be an ASCII path starting with '/'")
    if path is not None and profile is not None:
        bad("path", "give profile or path, not both")
    if auth is None:
        return None
    return DeviceSpec(
        id=device_id,
        line=line,
        subject=subject,
        sans=tuple(sans),
        auth=auth,
        key_type=key_type,
        central_key=central_key,
        csr=csr,
        csr_key=csr_key,
        profile=profile,
        path=path,
        cert_profile=row.get("cert_profile"),
        **header,  # type: ignore[arg-type]
        fingerprint=_fingerprint(row),
    )


def _header(row: dict[str, str], auth: MacAuth | CertAuth | None, bad) -> dict[str, object]:
    """The row's header columns, checked: sender (MAC only: a signed request names its
    certificate's subject), recipient, message_time, max_iterations."""
    out: dict[str, object] = {}
    for name in ("sender", "recipient"):
        if name in row:
            try:
                out[name] = parse_name(row[name])
            except FleetError as exc:
                bad(name, str(exc))
    if "sender" in row and isinstance(auth, CertAuth):
        bad("sender", "only with secret (MAC): a signed request names its certificate's subject")
    if "message_time" in row:
        value = row["message_time"].lower()
        if value not in ("true", "false"):
            bad("message_time", f"must be true or false, not {row['message_time']!r}")
        out["message_time"] = value == "true"
    if "max_iterations" in row:
        text = row["max_iterations"]
        if not text.isdigit() or int(text) < 1:
            bad("max_iterations", f"must be an integer >= 1, not {text!r}")
        else:
            out["max_iterations"] = int(text)
    return out


def _auth(row: dict[str, str], base: Path, bad, cache, device_id: str) -> MacAuth | CertAuth | None:
    has_mac = "secret" in row
    has_cert = "cert" in row or "key" in row
    if has_mac and has_cert:
        bad("secret", "give secret (MAC) or cert and key (IDevID), not both")
        return None
    if has_mac:
        try:
            secret = read_secret(row["secret"])
        except FleetError as exc:
            bad("secret", str(exc))
            return None
        reference = row.get("ref", device_id)
        try:
            parse_reference(reference)
        except ValueError as exc:
            bad("ref", str(exc))
            return None
        return MacAuth(reference, secret)
    if "ref" in row:
        bad("ref", "only with secret")
    if not has_cert:
        bad("secret", "no authentication: give secret (MAC) or cert and key (IDevID)")
        return None
    if "cert" not in row or "key" not in row:
        bad("cert" if "cert" not in row else "key", "signature authentication needs both cert and key")
        return None
    cert = None
    pool: tuple[x509.Certificate, ...] = ()
    try:
        cert, *rest = _cached(cache, ("cert", row["cert"]), lambda: load_certificates(_path(base, row["cert"])))
        pool = tuple(rest)
    except FleetError as exc:
        bad("cert", str(exc))
    password = None
    if "key_pass" in row:
        try:
            password = read_secret(row["key_pass"])
        except FleetError as exc:
            bad("key_pass", str(exc))
            return None
    key = _load_key(row, "key", password, base, bad, cache)
    chain: tuple[x509.Certificate, ...] = ()
    if "chain" in row:
        try:
            chain = tuple(_cached(cache, ("chain", row["chain"]), lambda: load_certificates(_path(base, row["chain"]))))
        except FleetError as exc:
            bad("chain", str(exc))
    if cert is None or key is None:
        return None
    if _spki(cert.public_key()) != _spki(key.public_key()):
        bad("key", "does not match the public key of cert")
        return None
    return CertAuth(cert, key, chain, pool)


def _load_key(row: dict[str, str], name: str, password: bytes | None, base: Path, bad, cache) -> PrivateKey | None:
    try:
        return _cached(cache, (name, row[name], password and hashlib.sha256(password).hexdigest() or ""),
                       lambda: load_private_key(_path(base, row[name]), password))
    except FleetError as exc:
        bad(name, str(exc))
        return None


def _cached(cache: dict[tuple[str, ...], object], key: tuple[str, ...], make):
    """Manifests often share one vendor chain or key file; read each once."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _path(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _spki(public_key: object) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def _fingerprint(row: dict[str, str]) -> str:
    """Hash of the row's cells (secret sources included, never their values)."""
    canonical = json.dumps(sorted(row.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
