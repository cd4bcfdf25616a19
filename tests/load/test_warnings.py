"""Accepted CA habits are counted, not hidden: a load run against a CA whose clock is an hour
ahead (fleet's real CA in this process, virtual time) counts one message_time_skew warning per
enrollment in the results, the report, the summary table and /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
from inprocess_ca import MASTER, InProcessCa

from fleet.cmp.trust import TrustStore
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.metrics import FleetMetrics
from fleet.load.orchestrator import summary_table
from fleet.load.profiles import parse_profile
from fleet.load.results import RunResults
from fleet.load.runner import WorkerPlan, WorkerRun
from fleet.load.segments import split
from fleet.transport import CmpTransport

AHEAD = 3600.0


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[InProcessCa]:
    authority = InProcessCa(tmp_path / "ca", max_time_skew=None)  # it must not refuse our clock
    yield authority
    authority.close()


async def test_skewed_ca_clock_is_counted_once_per_enrollment(ca: InProcessCa, autojump_clock: trio.abc.Clock) -> None:
    profile = parse_profile({
        "run": {"duration": 4, "transaction_timeout": 5, "max_in_flight": 50, "flow": ["ir"]},
        "arrivals": {"shape": "constant", "rate": 5},
        "devices": {"count": 100, "key_types": "ec:P-256"},
    }, where="test")
    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    devices = DeviceFactory(profile.devices, pools, master_secret=MASTER, trust=TrustStore([ca.root()]))
    wall = time.time()
    start = trio.current_time()

    def factory() -> AbstractAsyncContextManager[CmpTransport]:
        return ca.transport(clock=lambda: wall + AHEAD + trio.current_time() - start)

    metrics = FleetMetrics(process=False)
    plan = WorkerPlan(profile, "http://127.0.0.1:9/never-used", split(1)[0])
    results = await WorkerRun(plan, devices, observer=metrics, transport=factory).run()  # type: ignore[arg-type]
    ir = results.ops["ir"]
    assert ir.ok == 20 and ir.failed == 0
    assert dict(ir.warnings) == {"message_time_skew": 20}
    again = RunResults.from_dict(results.to_dict())  # the report keeps them
    assert dict(again.ops["ir"].warnings) == {"message_time_skew": 20}
    table = summary_table(profile, results)
    assert "warnings (accepted, see docs/strictness.md): message_time_skew 20: " in table
    text = metrics.exposition().decode()
    assert 'fleet_transaction_warnings_total{operation="ir",warning="message_time_skew",worker="0"} 20.0' in text
