"""Refilling a prepared pool during a run, in a helper process on another core.

A worker's arrival *k* is device ``shard.start + k % len(shard)``: once the pool's entries for
its shard are used, devices come round again and, with ``prepared = true``, each needs a new key
(never the same one certified twice). ``start_helper`` starts a process that prepares those
devices in the order arrivals will reach them, from arrival ``first`` on, and streams their
records to the worker through a pipe, at most ``ahead`` records ahead of what the worker has
used. The worker reads what has arrived only when a device misses the pool (a ``poll`` system
call), so a run whose devices never come round pays nothing; a device whose record is not there
yet makes its key live, as without a refill.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

from fleet.load.prepared_store import record_maker
from fleet.load.profiles import DevicePopulation

_CHUNK = 64  # records per message: a message fits the pipe's buffer
_INDEX = struct.Struct(">QI")  # device index, record length


def _helper(devices: DevicePopulation, start: int, size: int, first: int, ahead: int, conn: Connection,
            used: Any, kur: bool = False) -> None:
    """The helper process: records for arrivals ``first``, ``first + 1``, ... of a shard."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when to stop
    make = record_maker(devices, kur=kur)
    arrival = first
    sent = 0
    try:
        while True:
            while sent - used.value >= ahead:
                time.sleep(0.01)
            parts = []
            for k in range(arrival, arrival + _CHUNK):
                index = start + k % size
                record = make(index)
                parts.append(_INDEX.pack(index, len(record)) + record)
            conn.send_bytes(b"".join(parts))
            arrival += _CHUNK
            sent += _CHUNK
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass


def start_helper(devices: DevicePopulation, shard: range, first: int, *, ahead: int = 4096,
                 kur: bool = False) -> tuple[Any, Refill]:
    """(the helper process, the worker's end of it). The worker's end may be handed to a worker
    process as it starts (a worker process, being a daemon, cannot start the helper itself).
    ``kur``: the records carry kur keys, as the pool's do."""
    ctx = multiprocessing.get_context("spawn")  # the worker runs trio: no fork
    conn, child = ctx.Pipe(duplex=False)
    used = ctx.Value("q", 0, lock=False)
    process = ctx.Process(target=_helper, args=(devices, shard.start, len(shard), first, ahead, child, used, kur), daemon=True)
    process.start()
    child.close()
    return process, Refill(conn, used)


class Refill:
    """The worker's end: the pipe and the records received so far, by device (a device may have
    several waiting: each is good for its next issuance, whenever it comes round)."""

    def __init__(self, conn: Connection, used: Any) -> None:
        self._conn = conn
        self._used = used
        self._spares: dict[int, list[bytes]] = {}
        self.received = 0

    def _receive(self) -> None:
        """Take every message waiting in the pipe (never blocks)."""
        conn, spares = self._conn, self._spares
        with contextlib.suppress(EOFError, OSError):
            while conn.poll():
                data = conn.recv_bytes()
                pos = 0
                while pos < len(data):
                    index, length = _INDEX.unpack_from(data, pos)
                    pos += _INDEX.size
                    spares.setdefault(index, []).append(data[pos : pos + length])
                    pos += length
                    self.received += 1

    def take(self, index: int) -> bytes | None:
        """Device ``index``'s next record, or None when the helper has not made it yet."""
        waiting = self._spares.get(index)
        if not waiting:
            self._receive()
            waiting = self._spares.get(index)
            if not waiting:
                return None
        record = waiting.pop(0)
        if not waiting:
            del self._spares[index]
        self._used.value += 1
        return record

    def close(self) -> None:
        self._conn.close()
