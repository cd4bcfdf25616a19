"""What a provisioned device gets on disk, and the run's summary.

``<out>/<device id>/`` (mode 0700) holds ``key.pem`` (PKCS#8 PEM, encrypted with ``--key-pass``,
mode 0600; absent for p10cr devices, which keep their own key), ``chain.pem`` (intermediate CA
certificates, issuing CA first), ``ca.pem`` (the root), optionally ``device.p12`` (0600) and
``cert.pem``. Every file is written atomically (temporary file, fsync, rename, fsync of the
folder) and ``cert.pem`` is written last, so its presence means the set is complete. A file with
nothing to hold is not written (never a 0-byte ``ca.pem``): a p10cr device whose response carried
no root gets no ``ca.pem`` unless ``--trusted`` names one, and the summary says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12

from fleet.cmp.protection import PrivateKey
from fleet.cmp.trust import is_self_signed, load_cert
from fleet.errors import FleetError
from fleet.files import atomic_write, certs_pem, load_private_key, write_private_key

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "CHAIN_FILE",
    "KEY_FILE",
    "P12_FILE",
    "SUMMARY_FILE",
    "OutputError",
    "check_writable",
    "device_dir",
    "files_error",
    "format_table",
    "key_id",
    "load_key",
    "prepare_out",
    "remove_certificate_files",
    "remove_rejected_files",
    "remove_stale_temporaries",
    "run_report",
    "split_chain",
    "store_key",
    "write_certificate",
    "write_summary",
]

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
CA_FILE = "ca.pem"
P12_FILE = "device.p12"
SUMMARY_FILE = "summary.json"


class OutputError(FleetError):
    """An output folder or file that cannot be written."""

    kind = "output_error"


def device_dir(out: Path, device_id: str) -> Path:
    path = out / device_id
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be made in it (mode bits do not stop
    root; an immutable folder, a read-only mount or a file in the way do): ``OSError`` if not."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = folder / ".probe.tmp"  # one writer per folder; a leftover is a stale temporary
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.unlink(probe)


def prepare_out(out: Path) -> None:
    """The run's output folder, checked before anything is sent: ``OutputError`` in one line."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{str(out)!r} is a file, not a folder")
    try:
        check_writable(out)
    except OSError as exc:
        raise OutputError(f"cannot write in {str(out)!r}: {exc.strerror or exc}") from None


def key_id(public_key: object) -> str:
    """SHA-256 of the SubjectPublicKeyInfo: names a key in the journal without revealing it."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return hashlib.sha256(spki).hexdigest()


def store_key(out: Path, device_id: str, key: PrivateKey, password: bytes | None) -> None:
    write_private_key(device_dir(out, device_id) / KEY_FILE, key, password)


def load_key(out: Path, device_id: str, password: bytes | None) -> PrivateKey | None:
    """The device's stored key, or None when it has none yet."""
    path = out / device_id / KEY_FILE
    if not path.exists():
        return None
    return load_private_key(path, password)


def split_chain(cert_der: bytes, candidates: Iterable[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The path above ``cert_der`` built from ``candidates`` (extraCerts, caPubs, anchors):
    (intermediates from the issuing CA up, roots). Certificates not on the path are dropped."""
    pool = [load_cert(c) for c in dict.fromkeys(candidates) if c != cert_der]
    current = load_cert(cert_der)
    intermediates: list[bytes] = []
    roots: list[bytes] = []
    for _ in range(8):
        parent = next((c for c in pool if c.subject == current.issuer and _signed_by(current, c)), None)
        if parent is None:
            break
        parent_der = parent.public_bytes(Encoding.DER)
        if is_self_signed(parent):
            roots.append(parent_der)
            break
        intermediates.append(parent_der)
        current = parent
    return intermediates, roots


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):  # not this parent
        return False
    return True


def write_certificate(
    out: Path,
    device_id: str,
    cert_der: bytes,
    intermediates: Sequence[bytes],
    roots: Sequence[bytes],
    *,
    key: PrivateKey | None = None,
    p12_password: bytes | None = None,
    p12: bool = False,
) -> None:
    """Write the chain, CA and PKCS#12 files, then ``cert.pem`` last. An empty chain or root
    list writes no file and removes one an earlier certificate left."""
    folder = device_dir(out, device_id)
    for name, certs in ((CHAIN_FILE, intermediates), (CA_FILE, roots)):
        if certs:
            atomic_write(folder / name, certs_pem(certs))
        else:
            try:
                os.unlink(folder / name)
            except FileNotFoundError:
                pass
    if p12 and key is not None:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(p12_password) if p12_password else serialization.NoEncryption()
        )
        data = pkcs12.serialize_key_and_certificates(
            device_id.encode(), key, load_cert(cert_der),
            [load_cert(c) for c in [*intermediates, *roots]], encryption,
        )
        atomic_write(folder / P12_FILE, data, mode=0o600)
    atomic_write(folder / CERT_FILE, certs_pem([cert_der]))


def files_error(what: str, exc: BaseException) -> OutputError:
    """One line for a device whose files cannot be written or read."""
    if isinstance(exc, OSError) and exc.strerror:
        target = exc.filename2 or exc.filename  # a rename names its destination second
        where = f": {str(target)!r}" if target else ""
        return OutputError(f"{what}: {exc.strerror}{where}")
    return OutputError(f"{what}: {exc}")


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of atomic writes that a killed run left behind (never a real output)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                os.unlink(folder / name)
            except FileNotFoundError:
                pass


def remove_certificate_files(folder: Path) -> None:
    """An orphan's files must not look like a provisioned device: cert.pem (and p12) go."""
    for name in (CERT_FILE, P12_FILE):
        try:
            os.unlink(folder / name)
        except FileNotFoundError:
            pass
    if not folder.exists():
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_rejected_files(folder: Path) -> None:
    """Best effort: whatever was written for a certificate rejected in certConf goes (the folder
    may be the very thing that fails; the key stays for the next attempt)."""
    for name in (CERT_FILE, P12_FILE, CHAIN_FILE, CA_FILE):
        try:
            os.unlink(folder / name)
        except OSError:
            pass


def write_summary(out: Path, summary: dict[str, object]) -> Path:
    path = out / SUMMARY_FILE
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(summary, indent=1, sort_keys=False) + "\n").encode())
    return path


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[str], limit: int = 50) -> str:
    """A plain text table of the first ``limit`` rows (the JSON summary has them all)."""
    shown = list(rows[:limit])
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in shown]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more devices in {SUMMARY_FILE}")
    return os.linesep.join(lines)


def run_report(summary: dict[str, object], path: Path, columns: Sequence[str], limit: int = 30) -> str:
    """What a run prints: a table of the devices that failed or were provisioned in this run
    (none when a rerun finds everything done), then one line of counts that tells new from
    already done, and a line for devices left without ``ca.pem``."""
    rows = summary["results"]
    assert isinstance(rows, list)
    shown = [r for r in rows if r["outcome"] != "provisioned" or r.get("this_run") is not False]
    run = summary.get("run")
    done = f"{summary['provisioned']}/{summary['devices']} provisioned"
    if isinstance(run, dict):
        done += f" ({run['provisioned']} new, {run['skipped_confirmed']} already done)"
    orphans = summary["orphans"]
    assert isinstance(orphans, dict)
    lines = [format_table(shown, columns, limit=limit)] if shown else []
    lines.append(
        f"provision: {done}, {summary['failed']} failed, {summary['not_done']} not done; orphans: "
        + (", ".join(f"{n} {fate}" for fate, n in orphans.items()) if orphans else "none")
        + f"; summary in {path}"
    )
    missing = summary.get("without_ca_pem")
    if missing:
        devices = "device has" if missing == 1 else "devices have"
        lines.append(f"provision: {missing} provisioned {devices} no {CA_FILE}: no root certificate known "
                     "(the CA's responses carried none); rerun with --trusted to write it")
    return os.linesep.join(lines)
