"""``RandomPool``: the kernel CSPRNG's bytes, drawn 4 KiB at a time and handed out once each.

The CA takes 16-byte nonces and 8-byte serial suffixes thousands of times a second; one
``getrandom`` system call per 256 of them instead of one each saves a system call apiece. A forked
child (multiprocessing workers, the test suite) draws a fresh pool, so no two processes ever
hand out the same bytes. Not for use from several threads at once: one pool per event loop.
"""

from __future__ import annotations

import os

_forks = [0]  # grows in every forked child: pools drawn before the fork are not used again
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


class RandomPool:
    """``take(n)`` is ``os.urandom(n)`` from a pool drawn ahead; requests above a quarter of
    the pool go to ``os.urandom`` directly."""

    __slots__ = ("_buf", "_fork", "_pos")
    _SIZE = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._fork = _forks[0]

    def take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._buf) or self._fork != _forks[0]:
            if n > self._SIZE // 4:
                return os.urandom(n)
            self._buf, self._fork, pos, end = os.urandom(self._SIZE), _forks[0], 0, n
        self._pos = end
        return self._buf[pos:end]
