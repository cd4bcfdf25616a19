"""The journal: round trip, group commit, the single-writer lock, and survival of kill -9."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from fleet.provision.journal import (
    DeviceRecord,
    DeviceState,
    Journal,
    JournalBusy,
    JournalWriter,
    Orphan,
    OrphanFate,
)


def peek(path: Path, device_id: str) -> str:
    """The device's state as another connection sees it (only committed data)."""
    db = sqlite3.connect(path)
    try:
        return str(db.execute("SELECT state FROM devices WHERE device_id = ?", (device_id,)).fetchone()[0])
    finally:
        db.close()


def test_round_trip_of_records_orphans_and_events(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    rec = DeviceRecord("d1", DeviceState.RECEIVED, "fp", "kid", b"t" * 16, b"n" * 16, b"resp", b"cert", "0A", 2)
    orphan = Orphan("d1", b"o" * 16, True, OrphanFate.PENDING_REVOKE, b"cert", "0B", "certConf refused", 1.0)
    with Journal.open(path, server="http://ca") as journal:
        journal.remember([(rec, "received"), orphan])
        journal.commit([(rec, "received"), orphan])
        assert journal.meta("server") == "http://ca"
    with Journal.open(path) as journal:
        assert journal.device("d1") == rec
        assert journal.orphans_of("d1") == [orphan]
        assert journal.device("unknown").state is DeviceState.NEW
        assert journal.events() == [("d1", "received", "received"), ("d1", "orphan_pending_revoke", "-")]


def test_second_user_of_a_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path):
        with pytest.raises(JournalBusy, match=r"in use by another fleet provision \(pid \d+\)"):
            Journal.open(path)
        holder = subprocess.run(  # noqa: PLW1510 (the failure is the point)
            [sys.executable, "-c", f"from fleet.provision.journal import Journal; Journal.open({str(path)!r})"],
            capture_output=True, text=True, timeout=30,
        )
        assert holder.returncode != 0 and "JournalBusy" in holder.stderr
    Journal.open(path).close()  # free again once closed


async def test_group_commit_makes_each_write_durable_before_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path) as journal:
        writer = JournalWriter(journal)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)

            async def device(i: int) -> None:
                for state in (DeviceState.KEY, DeviceState.SENT, DeviceState.CONFIRMED):
                    await writer.write((DeviceRecord(f"d{i}", state), state.value))
                    # Durable now: a second connection sees it.
                    assert peek(path, f"d{i}") == state.value

            async with trio.open_nursery() as devices:
                for i in range(40):
                    devices.start_soon(device, i)
            nursery.cancel_scope.cancel()
        assert 3 <= writer.commits < 120  # grouped: fewer commits than the 120 writes
    with Journal.open(path) as journal:
        assert {r.state for r in journal.devices.values()} == {DeviceState.CONFIRMED}


async def test_in_memory_journal_persists_nothing(tmp_path: Path) -> None:
    journal = Journal.in_memory()
    writer = JournalWriter(journal)
    await writer.write((DeviceRecord("d", DeviceState.KEY), "key"))
    assert journal.device("d").state is DeviceState.KEY and not journal.durable


def test_kill_9_during_commits_leaves_a_consistent_journal(tmp_path: Path) -> None:
    """A child commits batches in a loop and is killed mid-way; every committed batch is whole."""
    path = tmp_path / "j.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from fleet.provision.journal import DeviceRecord, DeviceState, Journal
        j = Journal.open({str(path)!r})
        batch = 0
        while True:
            j.commit([(DeviceRecord(f"d{{i}}", DeviceState.SENT, attempts=batch), "sent") for i in range(50)])
            batch += 1
            if batch == 5:
                print("ready", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        child.kill()
        child.wait(timeout=10)
    with Journal.open(path) as journal:  # the lock died with the child
        attempts = {r.attempts for r in journal.devices.values()}
        assert len(journal.devices) == 50 and len(attempts) == 1  # one whole batch, never half
        assert len(journal.events()) == 50 * (attempts.pop() + 1)
