"""WorkerRun over a transport factory: one worker's devices against fleet's real CA in this
process, without sockets, in virtual time (trio's MockClock)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
from inprocess_ca import MASTER, InProcessCa

from fleet.cmp.trust import TrustStore
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.profiles import Profile, parse_profile
from fleet.load.runner import WorkerPlan, WorkerRun
from fleet.load.segments import split
from fleet.transport import CmpTransport


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[InProcessCa]:
    authority = InProcessCa(tmp_path / "ca")
    yield authority
    authority.close()


def _profile(flow: tuple[str, ...] = ("ir",), timeout: float = 5.0) -> Profile:
    return parse_profile(
        {
            "run": {
                "duration": 10,
                "transaction_timeout": timeout,
                "max_in_flight": 100,
                "flow": list(flow),
            },
            "arrivals": {"shape": "constant", "rate": 5},
            "devices": {"count": 1000, "key_types": "ec:P-256"},
        },
        where="test",
    )


def _worker(
    ca: InProcessCa, profile: Profile, latency: float, observer: object = None
) -> tuple[WorkerRun, list[int]]:
    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    devices = DeviceFactory(
        profile.devices, pools, master_secret=MASTER, trust=TrustStore([ca.root()])
    )
    opened: list[int] = []

    def factory() -> AbstractAsyncContextManager[CmpTransport]:
        opened.append(1)
        return ca.transport(latency=latency)

    plan = WorkerPlan(profile, "http://127.0.0.1:9/never-used", split(1)[0])
    return WorkerRun(plan, devices, observer=observer, transport=factory), opened  # type: ignore[arg-type]


class Observed:
    def __init__(self) -> None:
        self.exchanges: list[tuple[str, str, float]] = []
        self.done: list[tuple[str, bool, str]] = []

    def operation_started(self, op: str) -> None:
        pass

    def operation_done(
        self,
        op: str,
        ok: bool,
        kind: str,
        fail_info: tuple[str, ...],
        latency: float,
        service: float,
        polls: int,
    ) -> None:
        self.done.append((op, ok, kind))

    def exchange(self, op: str, body: str, seconds: float) -> None:
        self.exchanges.append((op, body, seconds))


async def test_worker_runs_its_devices_over_the_transport_it_is_given(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """10 virtual seconds at 5/s: 50 enrollments at the CA, each ir + certConf taking exactly
    twice the transport's latency, none from the URL (which has no server)."""
    observer = Observed()
    run, opened = _worker(ca, _profile(), latency=0.125, observer=observer)
    results = await run.run()
    ir = results.ops["ir"]
    assert opened == [1] and results.scheduled == results.started == 50
    assert (ir.ok, ir.failed) == (50, 0)
    assert ir.latency.min == pytest.approx(0.25, abs=1e-6) and ir.latency.max == pytest.approx(
        0.25, abs=1e-6
    )
    assert ca.counts() == {"issued": 50}
    assert sorted(body for _, body, _ in observer.exchanges) == ["certConf"] * 50 + ["ir"] * 50
    assert all(
        op == "ir" and seconds == pytest.approx(0.125) for op, _, seconds in observer.exchanges
    )
    assert observer.done == [("ir", True, "ok")] * 50


async def test_a_slow_ca_times_transactions_out_at_the_profiles_timeout(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """transaction_timeout 1 s, each answer 0.75 s: the certConf's answer would come at 1.5 s."""
    run, _ = _worker(ca, _profile(timeout=1.0), latency=0.75)
    results = await run.run()
    ir = results.ops["ir"]
    assert (ir.ok, ir.failed) == (0, 50) and dict(ir.errors) == {"transaction_timeout": 50}
    assert ir.latency.count == 0 and run.live.errors == {"transaction_timeout": 50}


async def test_a_flow_keeps_the_new_certificate_for_its_next_step(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """ir then kur then rr: kur is signed with the ir's certificate, rr with the kur's."""
    run, _ = _worker(ca, _profile(("ir", "kur", "rr")), latency=0.0)
    results = await run.run()
    assert {op: (s.ok, s.failed) for op, s in results.ops.items()} == {
        "ir": (50, 0),
        "kur": (50, 0),
        "rr": (50, 0),
    }
    assert ca.counts() == {"issued": 50, "revoked": 50}  # the ir's certificates replaced by kur
