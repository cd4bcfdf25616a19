"""The arrival driver under trio's MockClock (simulated hours, run instantly) and a real clock."""

import heapq
import time

import numpy as np
import pytest
import trio

from fleet.load.arrivals import ArrivalDriver, drive_arrivals
from fleet.load.schedule import Constant, Poisson


async def _instant(i: int, intended: float) -> None:
    await trio.lowlevel.checkpoint()


def _takes(seconds: float):
    """A start function whose every arrival runs for ``seconds``."""

    async def start(i: int, intended: float) -> None:
        await trio.sleep(seconds)

    return start


async def test_two_simulated_hours_start_every_arrival_exactly_on_time(autojump_clock):
    offsets = Constant(5).offsets(7200)  # 36,000 arrivals
    t0 = trio.current_time()
    seen_late = []
    mismatched = []

    async def start(i: int, intended: float) -> None:
        if intended != t0 + offsets[i] or trio.current_time() != intended:
            mismatched.append(i)
        await trio.sleep(0.5)  # a task that takes simulated time

    stats = await drive_arrivals(
        offsets, start, max_in_flight=10, on_late=lambda i, late: seen_late.append(i)
    )
    assert (stats.scheduled, stats.started, stats.dropped, stats.completed) == (
        36_000,
        36_000,
        0,
        36_000,
    )
    assert mismatched == [] and seen_late == []
    assert stats.lateness.count == 36_000
    assert stats.max_lateness == 0.0 and stats.lateness.percentile(100) == 0.0
    assert stats.in_flight_peak == 3  # 0.5 s tasks every 0.2 s
    assert trio.current_time() - t0 == pytest.approx(7199.8 + 0.5)


async def test_slow_tasks_over_the_cap_are_dropped_and_counted(autojump_clock):
    # 5/s, each task 0.9 s, at most 3 running: in every second the arrivals at .0, .2, .4 start
    # and those at .6, .8 find 3 running and are dropped (the first finishes at .9).
    offsets = Constant(5).offsets(7200)
    started_at = []

    async def start(i: int, intended: float) -> None:
        started_at.append(offsets[i] % 1.0)
        await trio.sleep_until(intended + 0.9)

    stats = await drive_arrivals(offsets, start, max_in_flight=3)
    assert (stats.started, stats.dropped, stats.completed) == (21_600, 14_400, 21_600)
    assert stats.started + stats.dropped == stats.scheduled
    assert stats.in_flight_peak == 3 and stats.max_lateness == 0.0
    assert sorted(set(np.round(started_at, 6))) == [0.0, 0.2, 0.4]


def _reference(offsets: np.ndarray, durations: np.ndarray, cap: int) -> tuple[int, int, int]:
    """Started, dropped and peak concurrency of the same schedule, by event simulation."""
    ends: list[float] = []
    started = dropped = peak = 0
    for t, d in zip(offsets.tolist(), durations.tolist()):
        while ends and ends[0] <= t:
            heapq.heappop(ends)
        if len(ends) < cap:
            heapq.heappush(ends, t + d)
            started += 1
            peak = max(peak, len(ends))
        else:
            dropped += 1
    return started, dropped, peak


async def test_drops_match_an_event_simulation_for_poisson_arrivals(autojump_clock):
    rng = np.random.default_rng(2024)
    offsets = Poisson(4).offsets(3600, rng)  # one simulated hour, about 14,400 arrivals
    durations = rng.lognormal(mean=0.0, sigma=0.8, size=len(offsets))  # median 1 s, long tail
    t0 = trio.current_time()

    async def start(i: int, intended: float) -> None:
        await trio.sleep_until(t0 + offsets[i] + durations[i])

    stats = await drive_arrivals(offsets, start, max_in_flight=6, clock_t0=t0)
    started, dropped, peak = _reference(offsets, durations, 6)
    assert dropped > 100  # the cap really binds
    assert (stats.started, stats.dropped, stats.in_flight_peak) == (started, dropped, peak)
    assert stats.completed == started and stats.max_lateness == 0.0


async def test_statistics_are_live(autojump_clock):
    offsets = Constant(5).offsets(200)
    driver = ArrivalDriver(offsets, _takes(0.3), max_in_flight=100)
    snapshots = []

    async def watch() -> None:
        await trio.sleep(100.05)  # no ties with arrivals or completions
        snapshots.append(driver.statistics())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        stats = await driver.run()
    (mid,) = snapshots
    # Arrivals at 0, 0.2, ..., 100.0 are due by 100.05; those at 99.8 and 100.0 still run.
    assert (mid.scheduled, mid.started, mid.dropped, mid.due) == (1000, 501, 0, 501)
    assert (mid.in_flight, mid.completed) == (2, 499)
    end = driver.statistics()
    assert (end.started, end.completed, end.in_flight) == (1000, 1000, 0)
    assert stats.started == 1000


async def test_cancelling_the_run_cancels_its_tasks_and_keeps_the_counts(autojump_clock):
    driver = ArrivalDriver(Constant(5).offsets(60), _takes(0.5), max_in_flight=100)
    with trio.move_on_after(10.05):
        await driver.run()
    stats = driver.stats()
    # Arrivals at 0 .. 10.0 started; those from 9.6 on were still running and were cancelled.
    assert (stats.started, stats.completed, stats.dropped) == (51, 48, 0)
    assert driver.statistics().in_flight == 0


async def test_arrivals_already_due_start_in_one_wake_up_or_are_dropped(autojump_clock):
    # t0 one second in the past: the arrivals at 0, 0.2, ..., 0.8 and 1.0 are all due at once.
    offsets = Constant(5).offsets(4)
    now = trio.current_time()
    late = []

    async def start(i: int, intended: float) -> None:
        await trio.sleep(10)

    stats = await drive_arrivals(
        offsets,
        start,
        max_in_flight=4,
        clock_t0=now - 1.0,
        on_late=lambda i, lateness: late.append((i, round(lateness, 9))),
    )
    # Six were due at once: four started (all late), two dropped; the rest dropped as they came
    # due, because the four run for 10 s.
    assert (stats.started, stats.dropped, stats.completed) == (4, 16, 4)
    assert sorted(late) == [(0, 1.0), (1, 0.8), (2, 0.6), (3, 0.4)]  # trio shuffles task starts
    assert stats.max_lateness == pytest.approx(1.0)
    assert stats.lateness.count == 4


async def test_slack_batches_arrivals_and_reports_the_lateness(autojump_clock):
    offsets = Constant(100).offsets(10)
    # 100/s with 50 ms of slack: batches of about six; the cap must hold a whole batch.
    stats = await drive_arrivals(offsets, _instant, max_in_flight=8, slack=0.05)
    assert (stats.started, stats.dropped) == (1000, 0)
    assert 0.0 < stats.max_lateness <= 0.05 + 1e-9
    assert stats.lateness.percentile(50) > 0.0


async def test_an_exception_in_start_stops_the_run():
    async def start(i: int, intended: float) -> None:
        if i == 3:
            raise RuntimeError("boom")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="boom")):
        await drive_arrivals(np.zeros(10), start, max_in_flight=100)


async def test_empty_schedule():
    stats = await drive_arrivals(np.zeros(0), _instant, max_in_flight=1)
    assert (stats.scheduled, stats.started, stats.dropped, stats.completed) == (0, 0, 0, 0)
    assert stats.max_lateness == 0.0 and stats.in_flight_peak == 0


@pytest.mark.parametrize(
    ("offsets", "max_in_flight", "message"),
    [
        (np.array([1.0, 0.5]), 1, "sorted"),
        (np.array([-1.0, 0.5]), 1, "non-negative"),
        (np.array([0.0, np.nan]), 1, "finite"),
        (np.zeros((2, 2)), 1, "one-dimensional"),
        (np.zeros(2), 0, "max_in_flight"),
        (np.zeros(2), True, "max_in_flight"),
    ],
)
def test_bad_arguments(offsets, max_in_flight, message):
    with pytest.raises(ValueError, match=message):
        ArrivalDriver(offsets, _instant, max_in_flight=max_in_flight)
    with pytest.raises(ValueError, match="slack"):
        ArrivalDriver(np.zeros(1), _instant, max_in_flight=1, slack=-0.1)


async def test_a_driver_runs_once(autojump_clock):
    driver = ArrivalDriver(np.zeros(1), _instant, max_in_flight=1)
    await driver.run()
    with pytest.raises(RuntimeError, match="once"):
        await driver.run()


async def test_real_clock_smoke():
    offsets = Constant(200).offsets(1.0)
    count = 0

    async def start(i: int, intended: float) -> None:
        nonlocal count
        await trio.sleep(0.01)
        count += 1

    wall = time.perf_counter()
    stats = await drive_arrivals(offsets, start, max_in_flight=50)
    wall = time.perf_counter() - wall
    assert (stats.started, stats.dropped, stats.completed, count) == (200, 0, 200, 200)
    assert 0.99 <= wall < 1.8
    assert stats.lateness.percentile(50) < 0.05  # typically 0.5 ms: epoll rounds to 1 ms
