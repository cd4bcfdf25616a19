"""Device keys made ahead of need (``fleet provision --key-ahead N``).

Made on the spot, a device's key (tens of milliseconds of a core for RSA) sits between its
turn and its first request, on the provisioner's own cores. ``KeyAhead`` has worker processes
make the keys of the next ``N`` devices, in the order the runner takes them, while earlier
devices are on the wire; a device that starts takes the next one of its key type and the
runner writes it then (0600, encrypted with ``--key-pass``, exactly as a key made on the spot).

Keys made ahead wait only in memory (they cross from the worker in a pipe, never a file and
never a log line), so a run killed at any moment leaves no key file for a device that had not
started; the rerun makes new keys for those and drops nothing it needs. A device whose key is
still queued when it starts makes its own key at once (the workers have fallen behind), so the
pool never makes a device wait longer than it would without one. Workers watch their parent
and exit when it dies, killed or not.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from cryptography.hazmat.primitives.serialization import load_der_private_key

from fleet.cmp.protection import PrivateKey
from fleet.keytypes import KeySpec
from fleet.provision.journal import DeviceState, Journal
from fleet.provision.manifest import DeviceSpec

__all__ = ["KeyAhead", "KeyAheadStatistics", "planned_key_types"]


@dataclass(frozen=True)
class KeyAheadStatistics:
    prepared: int  # handed out from the workers' keys
    made_on_the_spot: int  # the device's key was not ready (or not planned): made by the caller


def planned_key_types(devices: Iterable[DeviceSpec], journal: Journal, *, token: bool = False) -> list[KeySpec]:
    """The key types the run will need new keys for, in the order it takes the devices: those
    that make their own key (no CSR, no central key generation, no PKCS#11 token) and have not
    made it yet (journal state ``new``)."""
    if token:
        return []
    return [
        d.key_type
        for d in devices
        if d.key_type is not None and d.csr is None and d.central_key is None
        and journal.device(d.id).state is DeviceState.NEW
    ]


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.25)
    os._exit(0)  # the provisioner is gone (even by SIGKILL): its keys are of no use to anyone


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the provisioner's to handle
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _load(der: bytes) -> PrivateKey:
    # Made by our own worker a moment ago: RSA's validation (a primality check costing about
    # as much as making the key) would give back what the worker saved.
    key = load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, PrivateKey)
    return key


def _generate(spec_text: str) -> bytes:
    """Worker entry point: one new key as unencrypted PKCS#8 DER (it goes back in a pipe)."""
    return KeySpec.parse(spec_text).generate_der()


class KeyAhead:
    """Keys of the planned types made ahead by ``workers`` processes, at most ``depth`` of them
    made or in the making and not yet taken. ``take`` is thread-safe (the runner calls it from
    worker threads). Use it as a context manager: leaving drops every key not taken."""

    def __init__(self, plan: Iterable[KeySpec], depth: int, *, workers: int | None = None) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._plan = deque(plan)
        self._depth = depth
        self._workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self._pending: dict[KeySpec, deque[Future[bytes]]] = {}
        self._outstanding = 0
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._prepared = 0
        self._on_the_spot = 0

    def __enter__(self) -> Self:
        return self.start()

    def start(self) -> Self:
        """Start the workers on the first ``depth`` planned keys; returns self."""
        if self._plan and self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=min(self._workers, len(self._plan)),
                mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded trio process
                initializer=_worker_init, initargs=(os.getpid(),),
            )
            with self._lock:
                self._refill()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Drop the keys not taken and stop the workers (each finishes at most its current key)."""
        with self._lock:
            executor, self._executor = self._executor, None
            self._plan.clear()
            self._pending.clear()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _refill(self) -> None:
        """Submit planned keys until ``depth`` are made or in the making (lock held)."""
        executor = self._executor
        while executor is not None and self._plan and self._outstanding < self._depth:
            spec = self._plan.popleft()
            try:
                future = executor.submit(_generate, str(spec))
            except (BrokenProcessPool, RuntimeError, OSError):  # a worker died, shut down or cannot start: on the spot
                self._executor = None
                self._plan.clear()
                return
            self._pending.setdefault(spec, deque()).append(future)
            self._outstanding += 1

    def take(self, spec: KeySpec) -> PrivateKey:
        """A new key of type ``spec``: the oldest one made ahead, else one made here and now."""
        with self._lock:
            queue = self._pending.get(spec)
            future = queue.popleft() if queue else None
            if future is not None:
                self._outstanding -= 1
                self._refill()
        if future is not None and not future.cancel():  # running or made: wait for it
            key = self._result(future)
            if key is not None:
                with self._lock:
                    self._prepared += 1
                return key
        with self._lock:
            self._on_the_spot += 1
        return spec.generate()

    @staticmethod
    def _result(future: Future[bytes]) -> PrivateKey | None:
        """The worker's key, or None when the worker died (the device then makes its own)."""
        try:
            return _load(future.result())
        except Exception:  # noqa: BLE001 - BrokenProcessPool, or a key the worker could not make
            return None

    def statistics(self) -> KeyAheadStatistics:
        with self._lock:
            return KeyAheadStatistics(self._prepared, self._on_the_spot)
