"""``RandomPool``: each byte handed out once, and a forked child never repeats its parent."""

from __future__ import annotations

import os

from fleet.randomness import RandomPool


def test_random_pool_hands_out_each_byte_once_and_afresh_after_fork() -> None:
    pool = RandomPool()
    nonces = [pool.take(16) for _ in range(600)]  # crosses two 4 KiB draws
    assert all(len(n) == 16 for n in nonces) and len(set(nonces)) == 600
    assert len(pool.take(5000)) == 5000  # larger than a pool: drawn directly
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next nonce must not be the parent's next one
        os.close(read_end)
        os.write(write_end, pool.take(16))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != pool.take(16)
