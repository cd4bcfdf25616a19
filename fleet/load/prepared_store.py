"""The prepared-device pools on disk: write, list, claim, load, remove; prepare in helper processes.

The format and its rules are in ``fleet.load.prepared``.
"""


from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import multiprocessing
import os
import secrets
import signal
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from fleet.cmp.trust import TrustStore
from fleet.files import atomic_write
from fleet.keys import PROGRESS_AFTER_SECONDS, KeyPool, ProgressLine, default_directory
from fleet.keytypes import KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.prepared import Identity, PreparedPool, PreparedPoolError, make_record
from fleet.load.profiles import DevicePopulation

_MAGIC = b"FLEETPD"  # then the format version byte
_VERSION = 1  # records without a kur key
_KUR_VERSION = 2  # records with one (the profile's flow has a kur)
_SUFFIX = ".prep"
_HEAD = struct.Struct(">8sQII")  # magic, used, used_crc, meta_len
_DIGEST_LEN = 32
_LITTLE_ENDIAN = struct.pack("=H", 1) == b"\x01\x00"


# -- the on-disk store ------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedInfo:
    """One pool file as ``list()`` sees it (header only; ``load`` verifies the digest)."""

    name: str
    path: Path
    identity: Identity | None
    count: int
    used: int
    bytes: int
    created: str = ""
    problem: str | None = None


def _crc(used: int) -> int:
    return zlib.crc32(struct.pack(">Q", used))


def _read_head(data: bytes | mmap.mmap, path: Path) -> tuple[int, Identity, dict, int]:
    """(used watermark, identity, meta, offset of the digest) from a pool file's start."""
    if len(data) < _HEAD.size:
        raise PreparedPoolError(f"prepared pool {path} is truncated (no header)")
    magic, used, used_crc, meta_len = _HEAD.unpack_from(data)
    if magic[:7] != _MAGIC:
        raise PreparedPoolError(f"{path} is not a fleet prepared pool (bad magic)")
    if magic[7] not in (_VERSION, _KUR_VERSION):
        raise PreparedPoolError(f"prepared pool {path} has format version {magic[7]}, this fleet reads "
                                f"{_VERSION} and {_KUR_VERSION}; remove it and prepare again")
    if _crc(used) != used_crc:
        raise PreparedPoolError(f"prepared pool {path}: its used watermark is damaged; remove the pool")
    end = _HEAD.size + meta_len
    if len(data) < end + _DIGEST_LEN:
        raise PreparedPoolError(f"prepared pool {path} is truncated (short header)")
    try:
        meta = json.loads(bytes(data[_HEAD.size : end]))
        identity = Identity(meta["key_type"], meta["subject"], tuple(meta["sans"]), magic[7] == _KUR_VERSION)
        int(meta["count"])
    except (ValueError, KeyError, TypeError):
        raise PreparedPoolError(f"prepared pool {path}: its description is damaged") from None
    return used, identity, meta, end


class PreparedStore:
    """The prepared pools of one directory (``<key pool directory>/prepared``)."""

    def __init__(self, directory: Path | str | None = None) -> None:
        base = Path(directory) if directory is not None else default_directory()
        self.directory = base / "prepared"

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise PreparedPoolError(f"cannot create {self.directory}: {exc.strerror}") from None

    def path_of(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise PreparedPoolError(f"not a prepared pool name: {name!r} (see `fleet keys list`)")
        return self.directory / (name.removesuffix(_SUFFIX) + _SUFFIX)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One lock for the directory: claiming a pool and removing one do not race."""
        self._ensure_directory()
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- writing --------------------------------------------------------------------------

    def write(self, identity: Identity, records: list[bytes]) -> Path:
        """A new pool file of ``records`` (devices 0..n-1), unused."""
        self._ensure_directory()
        meta = json.dumps({
            "key_type": identity.key_type, "subject": identity.subject, "sans": list(identity.sans),
            "count": len(records), "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **({"kur": True} if identity.kur else {}),
        }).encode()
        offsets = array("Q", [0])
        total = 0
        for r in records:
            total += len(r)
            offsets.append(total)
        if offsets.itemsize != 8:
            raise PreparedPoolError("this platform's array('Q') is not 64-bit")
        if _LITTLE_ENDIAN:  # stored big-endian
            offsets.byteswap()
        offset_bytes = offsets.tobytes()
        digest = hashlib.sha256(meta)
        digest.update(offset_bytes)
        for r in records:
            digest.update(r)
        version = _KUR_VERSION if identity.kur else _VERSION
        head = _HEAD.pack(_MAGIC + bytes([version]), 0, _crc(0), len(meta))
        path = self.directory / f"{identity.tag}-{secrets.token_hex(3)}{_SUFFIX}"
        atomic_write(path, (head, meta, digest.digest(), offset_bytes, b"".join(records)), mode=0o600)
        return path

    def prepare(
        self, devices: DevicePopulation, count: int, *, workers: int | None = None,
        progress: Callable[[int], None] | None = None, kur: bool = False,
    ) -> Path:
        """Prepare ``count`` devices (0..count-1) in ``workers`` processes (default: every core)
        and write them as a new pool (``kur``: each with a kur key too)."""
        identity = Identity.of(devices, kur=kur)
        if count < 1:
            raise PreparedPoolError("a prepared pool needs at least one device")
        records = prepare_records(devices, count, workers=workers, progress=progress, kur=kur)
        return self.write(identity, records)

    def set_used(self, path: Path, used: int) -> None:
        """Raise the pool's watermark to ``used`` (never lower it), durably."""
        with open(path, "r+b") as f:
            old, _, _, _ = _read_head(f.read(_HEAD.size + 65536), path)
            if used <= old:
                return
            f.seek(8)
            f.write(struct.pack(">QI", used, _crc(used)))
            f.flush()
            os.fsync(f.fileno())

    def remove(self, name: str) -> Path:
        path = self.path_of(name)
        with self._locked():
            try:
                path.unlink()
            except FileNotFoundError:
                raise PreparedPoolError(f"no prepared pool {name!r} in {self.directory}") from None
        return path

    # -- reading --------------------------------------------------------------------------

    def list(self) -> list[PreparedInfo]:
        if not self.directory.is_dir():
            return []
        infos = []
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            size = path.stat().st_size
            try:
                with open(path, "rb") as f:
                    used, identity, meta, _ = _read_head(f.read(_HEAD.size + 65536), path)
            except (PreparedPoolError, OSError) as exc:
                infos.append(PreparedInfo(path.stem, path, None, 0, 0, size, problem=str(exc)))
                continue
            infos.append(PreparedInfo(path.stem, path, identity, int(meta["count"]), used, size, meta.get("created", "")))
        return infos

    def find(self, identity: Identity, needed: int, *, unused: bool) -> PreparedInfo | None:
        """The smallest matching pool of at least ``needed`` devices (unused only, if asked), so
        larger ones stay for larger runs; None when there is none."""
        fits = [i for i in self.list() if i.identity == identity and i.problem is None and i.count >= needed
                and (i.used == 0 or not unused)]
        return min(fits, key=lambda i: (i.count, i.name)) if fits else None

    def claim(self, identity: Identity, needed: int, *, reuse: bool) -> PreparedInfo | None:
        """The pool a run takes, its watermark raised to the devices it may issue before the run
        starts; None when no pool fits (``reuse``: any matching pool large enough; else only an
        unused one)."""
        with self._locked():
            info = self.find(identity, needed, unused=not reuse)
            if info is not None:
                self.set_used(info.path, needed)
            return info

    def load(self, path: Path, identity: Identity, start: int = 0, count: int | None = None, *,
             reuse: bool = False) -> PreparedPool:
        """Devices ``start..start+count-1`` of a pool (those it holds), after verifying the whole
        file against its digest."""
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return self._load(data, path, identity, start, count, reuse)
        except OSError as exc:
            raise PreparedPoolError(f"cannot read prepared pool {path}: {exc.strerror}") from None
        except ValueError:  # mmap of an empty file
            raise PreparedPoolError(f"prepared pool {path} is empty") from None

    @staticmethod
    def _load(data: mmap.mmap, path: Path, identity: Identity, start: int, count: int | None,
              reuse: bool) -> PreparedPool:
        _, found, meta, at = _read_head(data, path)
        if found != identity and replace(found, kur=identity.kur) == identity:
            has = "holds kur keys" if found.kur else "holds no kur keys (a pool of format version 1)"
            raise PreparedPoolError(f"prepared pool {path} {has}, this run's flow "
                                    f"{'has' if identity.kur else 'has no'} kur; prepare a new one")
        if found != identity:
            raise PreparedPoolError(f"prepared pool {path} is for {found.describe()}, not {identity.describe()}")
        n = int(meta["count"])
        digest = bytes(data[at : at + _DIGEST_LEN])
        table_at = at + _DIGEST_LEN
        records_at = table_at + 8 * (n + 1)
        if len(data) < records_at:
            raise PreparedPoolError(f"prepared pool {path} is truncated; remove it and prepare again")
        check = hashlib.sha256(data[_HEAD.size : at])
        check.update(memoryview(data)[table_at:])
        if check.digest() != digest:
            raise PreparedPoolError(f"prepared pool {path} is corrupt (SHA-256 mismatch); remove it and prepare again")
        offsets = array("Q")
        offsets.frombytes(data[table_at:records_at])
        if _LITTLE_ENDIAN:
            offsets.byteswap()
        if offsets[0] != 0 or offsets[n] != len(data) - records_at:
            raise PreparedPoolError(f"prepared pool {path} is damaged: its records do not fill the file")
        lo_i = min(max(start, 0), n)
        hi_i = n if count is None else min(n, lo_i + max(count, 0))
        lo, hi = offsets[lo_i], offsets[hi_i]
        blob = data[records_at + lo : records_at + hi]
        sliced = array("Q", (o - lo for o in offsets[lo_i : hi_i + 1])) if lo else offsets[lo_i : hi_i + 1]
        return PreparedPool(KeySpec.parse(identity.key_type), blob, sliced, lo_i, reuse=reuse, kur=identity.kur)


def record_maker(devices: DevicePopulation, *, kur: bool = False) -> Callable[[int], bytes]:
    """A function making device ``index``'s record (new keys each call; ``kur``: a kur key too)."""
    spec = devices.key_types[0][0]
    factory = DeviceFactory(devices, {str(spec): KeyPool(spec, (), on_exhausted="generate")},
                            master_secret=None, trust=TrustStore())
    generate = spec.generate

    def make(index: int) -> bytes:
        fields = factory.template_fields(index)
        subject = factory.subject_der(index, fields)
        return make_record(generate(), subject if isinstance(subject, bytes) else subject.public_bytes(),
                           factory.sans(index, fields), generate() if kur else None)

    return make


def prepare_range(devices: DevicePopulation, start: int, stop: int, kur: bool = False) -> list[bytes]:
    """Records of devices ``start..stop-1`` (runs in a helper process)."""
    make = record_maker(devices, kur=kur)
    return [make(index) for index in range(start, stop)]


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does


_SECONDS_PER_DEVICE = 60e-6  # a rough figure for chunking and the progress line only


def prepare_records(
    devices: DevicePopulation, count: int, *, workers: int | None = None,
    progress: Callable[[int], None] | None = None, kur: bool = False,
) -> list[bytes]:
    """Records of devices 0..count-1, in ``workers`` processes (default: every core), in order."""
    n_workers = workers or os.cpu_count() or 1
    if n_workers == 1 or count * _SECONDS_PER_DEVICE < 0.5:
        records = prepare_range(devices, 0, count, kur)
        if progress is not None:
            progress(count)
        return records
    per_chunk = max(1, min(math.ceil(0.5 / _SECONDS_PER_DEVICE), math.ceil(count / (n_workers * 4))))
    bounds = [(a, min(a + per_chunk, count)) for a in range(0, count, per_chunk)]
    chunks: dict[int, list[bytes]] = {}
    ctx = multiprocessing.get_context("spawn")  # the caller may be threaded
    done = 0
    with ProcessPoolExecutor(max_workers=min(n_workers, len(bounds)), mp_context=ctx, initializer=_worker_init) as pool:
        futures: dict[Future[list[bytes]], int] = {pool.submit(prepare_range, devices, a, b, kur): a for a, b in bounds}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunks[futures[future]] = future.result()
                    done += len(chunks[futures[future]])
                if progress is not None:
                    progress(done)
        finally:
            for future in pending:
                future.cancel()
    return [r for a, _ in bounds for r in chunks[a]]


def ensure_prepared(
    store: PreparedStore, devices: DevicePopulation, needed: int, *, reuse: bool, out: TextIO | None = None,
    kur: bool = False,
) -> PreparedInfo:
    """The pool a run uses: a matching one from the store (claimed), else one prepared now for
    ``needed`` devices with a progress line on stderr, then claimed (``kur``: records with kur keys)."""
    identity = Identity.of(devices, kur=kur)
    info = store.claim(identity, needed, reuse=reuse)
    if info is not None:
        return info
    line = ProgressLine(needed, label="prepared devices") if needed * _SECONDS_PER_DEVICE >= PROGRESS_AFTER_SECONDS else None
    started = time.monotonic()
    store.prepare(devices, needed, progress=line, kur=kur)
    if line is not None:
        line.finish()
    if out is not None:
        print(f"fleet: prepared {needed} devices in {time.monotonic() - started:.1f} s into {store.directory}",
              file=out)
    info = store.claim(identity, needed, reuse=reuse)
    if info is None:  # another run claimed it between the two steps
        raise PreparedPoolError(f"the prepared pool made for this run was taken by another run in {store.directory}")
    return info
