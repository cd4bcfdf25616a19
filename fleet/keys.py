"""Pre-generated key pools: make device key pairs before a run, cache them on disk, hand them out.

RSA-2048 key generation costs tens of milliseconds (bench/README.md), so a capacity
test cannot afford to make its keys while it runs. ``KeyPoolStore.generate`` makes them ahead of
time in worker processes on every core and appends them to a per-type file; ``KeyPoolStore.load``
(or ``ensure``) turns that file into a ``KeyPool`` that devices ``take()`` keys from.

File format (``<dir>/<type>.keys``, e.g. ``rsa-2048.keys``), all integers big-endian::

    magic      8 bytes  b"FLEETKP" + version byte 0x01
    spec_len   u16      length of the key type string
    spec       ascii    e.g. "rsa:2048"
    count      u64      number of records
    rec_len    u64      number of bytes of records
    digest     32 bytes SHA-256 over every byte above plus the records
    records    count x (u32 length + PKCS#8 DER private key, unencrypted)

Appending never touches the existing file: under an exclusive lock the store reads and verifies
the old file, writes old records (verbatim, same order) plus the new ones to a temporary file,
fsyncs it and renames it over the old one. A crash leaves either the old or the new file, never a
half-written one; the copy costs a few milliseconds per MB, nothing next to key generation.

Keys are unencrypted on disk (they are throwaway test identities), so the directory is 0700 and
the files 0600. Nothing in this module logs, prints or puts key material into a repr or an error;
the only output is ``ProgressLine`` (counts and rates on stderr) while a long generation runs.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import logging
import math
import multiprocessing
import os
import signal
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from cryptography.hazmat.primitives import serialization

from fleet.errors import FleetError
from fleet.files import atomic_write
from fleet.keytypes import ALLOWED_SPECS, KeySpec, KeySpecError, PrivateKey

__all__ = [
    "ALLOWED_SPECS",
    "KeyPool",
    "KeyPoolError",
    "KeyPoolExhausted",
    "KeyPoolStatistics",
    "KeyPoolStore",
    "KeySpec",
    "KeySpecError",
    "OnExhausted",
    "PoolInfo",
    "PrivateKey",
    "ProgressLine",
    "ensure",
]

log = logging.getLogger(__name__)

OnExhausted = Literal["reuse", "generate", "error"]
# Record offsets into a pool's buffer; ``array`` is not subscriptable at runtime before 3.12.
if TYPE_CHECKING:
    _Offsets = array[int]
else:
    _Offsets = array

class KeyPoolError(FleetError):
    """A key pool that is missing, too small, damaged or misused."""


class KeyPoolExhausted(KeyPoolError):
    """``take()`` on a pool with no keys left and ``on_exhausted="error"``."""


def _load_der(der: bytes) -> PrivateKey:
    # RSA validation (a primality check of p and q in OpenSSL 3) costs about as much as
    # generating the key, which would defeat the pool. These keys were made by
    # ``KeySpec.generate`` and sit in a 0600 file under a SHA-256 check, so skipping is safe.
    key = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, PrivateKey)
    return key


# --------------------------------------------------------------------------------------------
# The in-memory pool


@dataclass(frozen=True)
class KeyPoolStatistics:
    """A snapshot of a pool for metrics. ``taken`` counts every key handed out; of those,
    ``reused`` were pool keys handed out again and ``generated`` were made on the fly.
    ``remaining`` is the number of never-used pool keys left."""

    spec: str
    size: int
    taken: int
    remaining: int
    reused: int
    generated: int


class KeyPool:
    """Keys for one run, handed out in order by ``take()``.

    Keys are held as one bytes buffer of length-prefixed PKCS#8 DER records plus an offset table
    (about DER length + 12 bytes per key; ~150 B for EC P-256, ~1.2 KB for RSA-2048) and become
    ``cryptography`` key objects only when taken. What happens when the pool runs out is explicit:

    - ``"error"``: ``take()`` raises ``KeyPoolExhausted``;
    - ``"reuse"``: start again from the first key (fine for load tests; counted in ``reused``);
    - ``"generate"``: make a new key (EC/Ed25519 only; an RSA key would block the run for as long as a key takes to make).
    """

    __slots__ = ("_blob", "_generated", "_offsets", "_on_exhausted", "_reused", "_spec", "_taken")

    def __init__(
        self, spec: KeySpec, ders: Iterable[bytes] = (), *, on_exhausted: OnExhausted = "error"
    ) -> None:
        buf = bytearray()
        offsets = array("Q", [0])
        for der in ders:
            buf += struct.pack(">I", len(der))
            buf += der
            offsets.append(len(buf))
        self._init(spec, bytes(buf), offsets, on_exhausted)

    @classmethod
    def _from_records(
        cls, spec: KeySpec, blob: bytes, offsets: _Offsets, on_exhausted: OnExhausted
    ) -> KeyPool:
        pool = cls.__new__(cls)
        pool._init(spec, blob, offsets, on_exhausted)
        return pool

    def _init(
        self, spec: KeySpec, blob: bytes, offsets: _Offsets, on_exhausted: OnExhausted
    ) -> None:
        if on_exhausted not in ("reuse", "generate", "error"):
            raise KeyPoolError(
                f"unknown on_exhausted policy {on_exhausted!r}; allowed: reuse, generate, error"
            )
        if on_exhausted == "generate" and not spec.is_cheap:
            raise KeyPoolError(
                f'on_exhausted="generate" needs a cheap key type (EC or Ed25519), not {spec}: '
                "generate more keys ahead of the run or use reuse"
            )
        self._spec = spec
        self._blob = blob
        self._offsets = offsets
        self._on_exhausted: OnExhausted = on_exhausted
        self._taken = 0
        self._reused = 0
        self._generated = 0

    @property
    def spec(self) -> KeySpec:
        return self._spec

    @property
    def on_exhausted(self) -> OnExhausted:
        return self._on_exhausted

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _load(self, index: int) -> PrivateKey:
        der = self._blob[self._offsets[index] + 4 : self._offsets[index + 1]]
        key = _load_der(der)
        if KeySpec.of(key) != self._spec:  # catches a pool built from the wrong DERs
            raise KeyPoolError(f"key {index} of a {self._spec} pool is a {KeySpec.of(key)} key")
        return key

    def take(self) -> PrivateKey:
        """The next key; once all are taken, apply the ``on_exhausted`` policy."""
        size = len(self)
        served_from_pool = self._taken - self._generated
        if served_from_pool < size:
            key = self._load(served_from_pool % size)
            self._taken += 1
            return key
        if self._on_exhausted == "reuse" and size:
            key = self._load(served_from_pool % size)
            self._taken += 1
            self._reused += 1
            return key
        if self._on_exhausted == "generate":
            key = self._spec.generate()
            self._taken += 1
            self._generated += 1
            return key
        raise KeyPoolExhausted(
            f"{self._spec} key pool exhausted after {size} keys; generate more with "
            f"`fleet keys generate --type {self._spec} --count N` or allow reuse"
        )

    def statistics(self) -> KeyPoolStatistics:
        size = len(self)
        fresh = min(self._taken - self._generated, size)
        return KeyPoolStatistics(
            spec=str(self._spec),
            size=size,
            taken=self._taken,
            remaining=size - fresh,
            reused=self._reused,
            generated=self._generated,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<KeyPool {s.spec} size={s.size} taken={s.taken} remaining={s.remaining} "
            f"reused={s.reused} generated={s.generated} on_exhausted={self._on_exhausted!r}>"
        )


# --------------------------------------------------------------------------------------------
# The on-disk store

_MAGIC = b"FLEETKP\x01"
_SUFFIX = ".keys"
_HEAD_FIXED = struct.Struct(">8sH")  # magic, spec length
_HEAD_COUNTS = struct.Struct(">QQ")  # count, records length
_DIGEST_LEN = 32


@dataclass(frozen=True)
class PoolInfo:
    """One pool file as ``list()`` sees it (from its header; ``problem`` if that looks wrong)."""

    spec: str
    count: int
    path: Path
    bytes: int
    problem: str | None = None


@dataclass(frozen=True)
class _Header:
    spec: str
    count: int
    records_len: int
    size: int  # header bytes including the digest


def _encode_header_prefix(spec: KeySpec, count: int, records_len: int) -> bytes:
    spec_b = str(spec).encode("ascii")
    return _HEAD_FIXED.pack(_MAGIC, len(spec_b)) + spec_b + _HEAD_COUNTS.pack(count, records_len)


def _parse_header(data: bytes, path: Path) -> _Header:
    if len(data) < _HEAD_FIXED.size:
        raise KeyPoolError(f"key pool file {path} is truncated (no header)")
    magic, spec_len = _HEAD_FIXED.unpack_from(data)
    if magic != _MAGIC:
        raise KeyPoolError(f"{path} is not a fleet key pool file (bad magic)")
    end = _HEAD_FIXED.size + spec_len + _HEAD_COUNTS.size + _DIGEST_LEN
    if len(data) < end:
        raise KeyPoolError(f"key pool file {path} is truncated (short header)")
    spec = data[_HEAD_FIXED.size : _HEAD_FIXED.size + spec_len].decode("ascii", "replace")
    count, records_len = _HEAD_COUNTS.unpack_from(data, _HEAD_FIXED.size + spec_len)
    return _Header(spec=spec, count=count, records_len=records_len, size=end)


def _index_records(records: bytes, count: int, path: Path) -> _Offsets:
    offsets = array("Q", [0])
    pos = 0
    end = len(records)
    for _ in range(count):
        if pos + 4 > end:
            raise KeyPoolError(f"key pool file {path} is damaged: records end early")
        (n,) = struct.unpack_from(">I", records, pos)
        pos += 4 + n
        if pos > end:
            raise KeyPoolError(f"key pool file {path} is damaged: record overruns the file")
        offsets.append(pos)
    if pos != end:
        raise KeyPoolError(f"key pool file {path} is damaged: trailing bytes after the records")
    return offsets


def _read_pool_file(path: Path, spec: KeySpec) -> tuple[bytes, _Offsets]:
    """Read and verify a whole pool file: (records, offsets). Any damage is a KeyPoolError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KeyPoolError(f"cannot read key pool file {path}: {exc.strerror}") from None
    header = _parse_header(data, path)
    if header.spec != str(spec):
        raise KeyPoolError(f"key pool file {path} holds {header.spec!r} keys, expected {spec}")
    expected = header.size + header.records_len
    if len(data) < expected:
        raise KeyPoolError(
            f"key pool file {path} is truncated: {len(data)} of {expected} bytes; "
            "delete it and generate again"
        )
    if len(data) > expected:
        raise KeyPoolError(f"key pool file {path} is damaged: {len(data) - expected} extra bytes")
    digest = data[header.size - _DIGEST_LEN : header.size]
    h = hashlib.sha256()
    h.update(memoryview(data)[: header.size - _DIGEST_LEN])
    h.update(memoryview(data)[header.size :])
    if h.digest() != digest:
        raise KeyPoolError(
            f"key pool file {path} is corrupt (SHA-256 mismatch); delete it and generate again"
        )
    records = data[header.size :]
    del data
    return records, _index_records(records, header.count, path)


def default_directory() -> Path:
    """``$FLEET_KEYS_DIR``, else ``$XDG_CACHE_HOME/fleet/keys``, else ``~/.cache/fleet/keys``."""
    override = os.environ.get("FLEET_KEYS_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "fleet" / "keys"


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group; let the parent alone decide what to do with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _generate_chunk(spec_text: str, n: int) -> list[bytes]:
    """Worker entry point: ``n`` new keys as PKCS#8 DER."""
    spec = KeySpec.parse(spec_text)
    return [spec.generate_der() for _ in range(n)]


# Below this many seconds of estimated work, generate in-process: spawning workers costs ~0.1 s.
_IN_PROCESS_BELOW_SECONDS = 1.0


class KeyPoolStore:
    """A directory of key pool files, one per key type."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_directory()

    def __repr__(self) -> str:
        return f"KeyPoolStore({str(self.directory)!r})"

    def path_for(self, spec: KeySpec) -> Path:
        return self.directory / (spec.file_stem + _SUFFIX)

    def _ensure_directory(self) -> None:
        if self.directory.is_dir():
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
        except OSError as exc:
            raise KeyPoolError(
                f"cannot create key pool directory {self.directory}: {exc.strerror}"
            ) from None

    @contextlib.contextmanager
    def _locked(self, spec: KeySpec) -> Iterator[None]:
        """Exclusive lock on one pool so two concurrent appends cannot lose each other's keys."""
        lock_path = self.directory / f".{spec.file_stem}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------------

    def count(self, spec: KeySpec) -> int:
        """How many keys the pool holds according to its header (0 if there is no pool)."""
        path = self.path_for(spec)
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD_FIXED.size + 255 + _HEAD_COUNTS.size + _DIGEST_LEN)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise KeyPoolError(f"cannot read key pool file {path}: {exc.strerror}") from None
        return _parse_header(head, path).count

    def list(self) -> builtins.list[PoolInfo]:
        """Every pool file in the directory, read from headers only (fast; ``load`` verifies)."""
        if not self.directory.is_dir():
            return []
        infos = []
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            size = path.stat().st_size
            try:
                with open(path, "rb") as f:
                    header = _parse_header(f.read(4096), path)
            except KeyPoolError as exc:
                infos.append(PoolInfo("?", 0, path, size, problem=str(exc)))
                continue
            problem = None
            if size != header.size + header.records_len:
                problem = f"size {size} does not match header ({header.size + header.records_len})"
            infos.append(PoolInfo(header.spec, header.count, path, size, problem))
        return infos

    def load(
        self,
        spec: KeySpec,
        count: int | None = None,
        *,
        start: int = 0,
        on_exhausted: OnExhausted = "error",
    ) -> KeyPool:
        """A pool of ``count`` keys (all if None) from index ``start``, after verifying the file.

        ``start`` lets several processes of one run take disjoint slices of the same pool.
        """
        if count is not None and count < 0 or start < 0:
            raise KeyPoolError("key count and start must not be negative")
        path = self.path_for(spec)
        if not path.exists():
            raise KeyPoolError(
                f"no {spec} key pool in {self.directory}; "
                f"run `fleet keys generate --type {spec} --count N`"
            )
        records, offsets = _read_pool_file(path, spec)
        available = len(offsets) - 1
        want = available - start if count is None else count
        if start + want > available:
            raise KeyPoolError(
                f"{spec} key pool {path} holds {available} keys, {start + want} needed; "
                f"run `fleet keys generate --type {spec} --count {start + want - available}`"
            )
        if start == 0 and want == available:
            return KeyPool._from_records(spec, records, offsets, on_exhausted)
        lo, hi = offsets[start], offsets[start + want]
        sliced = array("Q", (o - lo for o in offsets[start : start + want + 1]))
        return KeyPool._from_records(spec, records[lo:hi], sliced, on_exhausted)

    # -- writing ----------------------------------------------------------------------------

    def append(self, spec: KeySpec, ders: builtins.list[bytes]) -> int:
        """Append PKCS#8 DER keys to the pool; the existing keys stay, byte for byte and in order.
        Returns the pool's new size."""
        self._ensure_directory()
        path = self.path_for(spec)
        with self._locked(spec):
            if path.exists():
                old_records, offsets = _read_pool_file(path, spec)
                old_count = len(offsets) - 1
            else:
                old_records, old_count = b"", 0
            new_records = b"".join(struct.pack(">I", len(d)) + d for d in ders)
            count = old_count + len(ders)
            prefix = _encode_header_prefix(spec, count, len(old_records) + len(new_records))
            digest = hashlib.sha256(prefix)
            digest.update(old_records)
            digest.update(new_records)
            atomic_write(path, (prefix, digest.digest(), old_records, new_records), mode=0o600)
        return count

    def generate(
        self,
        spec: KeySpec,
        count: int,
        *,
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
        in_process: bool | None = None,
    ) -> int:
        """Generate ``count`` more keys and append them; returns the number added.

        Work runs in ``workers`` processes (default: all cores), in chunks so ``progress`` can be
        called with the running total. Without ``progress``, a job expected to take longer than
        ``PROGRESS_AFTER_SECONDS`` shows a ``ProgressLine`` on stderr (minutes of RSA keygen must
        not look like a hang). Small EC/Ed25519 jobs, or ``workers=1``, run in-process
        (``in_process`` forces either way). If interrupted (Ctrl-C) or a worker dies, the keys
        finished so far are still appended before the exception propagates.
        """
        if count < 0:
            raise KeyPoolError("key count must not be negative")
        if workers is not None and workers < 1:
            raise KeyPoolError("workers must be at least 1")
        if count == 0:
            return 0
        self._ensure_directory()
        n_workers = workers or os.cpu_count() or 1
        cost = spec.estimated_seconds_per_key
        if in_process is None:
            in_process = n_workers == 1 or count * cost < _IN_PROCESS_BELOW_SECONDS
        line = None
        if progress is None and count * cost / (1 if in_process else n_workers) >= PROGRESS_AFTER_SECONDS:
            progress = line = ProgressLine(count, label=f"{spec} keys")
        started = time.monotonic()
        ders: builtins.list[bytes] = []
        try:
            if in_process:
                self._generate_here(spec, count, ders, progress)
            else:
                self._generate_in_workers(spec, count, n_workers, ders, progress)
        finally:
            if line is not None:
                line.finish()
            # Keep finished work even when interrupted: a long RSA run should not start over.
            if ders:
                size = self.append(spec, ders)
                log.info(
                    "added %d %s keys to %s (now %d) in %.1f s",
                    len(ders), spec, self.path_for(spec), size, time.monotonic() - started,
                )  # fmt: skip
        return len(ders)

    @staticmethod
    def _generate_here(
        spec: KeySpec, count: int, out: builtins.list[bytes], progress: Callable[[int], None] | None
    ) -> None:
        step = max(1, min(count, math.ceil(0.25 / spec.estimated_seconds_per_key)))
        for i in range(count):
            out.append(spec.generate_der())
            if progress is not None and ((i + 1) % step == 0 or i + 1 == count):
                progress(i + 1)

    @staticmethod
    def _generate_in_workers(
        spec: KeySpec,
        count: int,
        n_workers: int,
        out: builtins.list[bytes],
        progress: Callable[[int], None] | None,
    ) -> None:
        # Chunks of about half a second each, and at least four per worker for balance.
        per_chunk = max(
            1,
            min(
                math.ceil(0.5 / spec.estimated_seconds_per_key),
                math.ceil(count / (n_workers * 4)),
            ),
        )
        sizes = [per_chunk] * (count // per_chunk)
        if count % per_chunk:
            sizes.append(count % per_chunk)
        # spawn, not fork: the caller may be a threaded (trio) program, where fork is unsafe.
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            max_workers=min(n_workers, len(sizes)), mp_context=context, initializer=_worker_init
        )
        pending: set[Future[builtins.list[bytes]]] = set()
        try:
            # The workers are spawned here. SIGINT stays blocked while they are, so a Ctrl-C that
            # lands before a worker has run its initializer cannot kill it mid-import (the blocked
            # mask is inherited; the parent gets the signal once it is unblocked).
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                pending = {executor.submit(_generate_chunk, str(spec), n) for n in sizes}
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    out.extend(future.result())
                if progress is not None:
                    progress(len(out))
        except BrokenProcessPool as exc:
            raise KeyPoolError(
                f"a key generation worker died ({exc}); kept {len(out)} keys"
            ) from None
        finally:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)
            # Chunks that were running when we were interrupted finished during shutdown: keep them.
            for future in pending:
                if future.done() and not future.cancelled() and future.exception() is None:
                    out.extend(future.result())


PROGRESS_AFTER_SECONDS = 2.0
"""``KeyPoolStore.generate`` shows a ``ProgressLine`` by itself for jobs expected to last longer."""


def _duration_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine:
    """The stderr progress of a key generation: done/total, keys/s, ETA. Redrawn in place on a
    terminal, otherwise a new line at most every few seconds (for CI logs)."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "keys") -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.last_print = 0.0
        self.drawn = False

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        interval = 0.2 if self.tty else 5.0
        if done < self.total and now - self.last_print < interval:
            return
        self.last_print = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = _duration_text((self.total - done) / rate) if rate > 0 else "?"
        width = len(str(self.total))
        line = f"{done:>{width}}/{self.total} {self.label}  {rate:,.1f} keys/s  ETA {eta}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def ensure(
    store: KeyPoolStore,
    spec: KeySpec,
    count: int,
    *,
    on_exhausted: OnExhausted = "error",
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> KeyPool:
    """A pool of ``count`` keys, generating (and storing) whatever the store lacks first.

    This blocks (minutes, for many RSA keys): call it before ``trio.run`` or through
    ``trio.to_thread.run_sync``, never directly inside a running event loop.
    """
    missing = count - store.count(spec)
    if missing > 0:
        store.generate(spec, missing, workers=workers, progress=progress)
    return store.load(spec, count, on_exhausted=on_exhausted)
