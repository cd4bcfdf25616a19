"""fleet run with centrally generated keys (``key_types = {"central:ec:P-256" = ...}``): the
profile grammar, and a worker mixing central and local keys against the real CA as KGA."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from inprocess_ca import MASTER, InProcessCa

from fleet.ca.kga import build_kga
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.cmp.trust import TrustStore
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.profiles import Profile, ProfileError, parse_profile
from fleet.load.runner import WorkerPlan, WorkerRun
from fleet.load.segments import split


def _profile(key_types: object, flow: tuple[str, ...] = ("ir", "kur"), **ca: object) -> Profile:
    return parse_profile(
        {
            "run": {"duration": 10, "max_in_flight": 100, "flow": list(flow)},
            "arrivals": {"shape": "constant", "rate": 4},
            "devices": {"count": 1000, "key_types": key_types},
            "ca": ca,
        },
        where="test",
    )


def test_central_key_types_parse_and_mix_with_local_ones() -> None:
    profile = _profile({"central:ec:P-256": 3, "ec:P-384": 1})
    devices = profile.devices
    assert [(str(s), w) for s, w in devices.key_types] == [("ec:P-384", 0.25)]
    assert [(str(s), w) for s, w in devices.central_key_types] == [("ec:P-256", 0.75)]
    assert profile.ca.kga is True  # the embedded CA generates what its devices ask for
    assert _profile("central:rsa:2048", kga_profiles="iot").ca.kga is False  # the profile said where
    assert _profile("ec:P-256").devices.central_key_types == ()


@pytest.mark.parametrize(
    ("key_types", "flow", "words"),
    [
        ("central:ed448", ("ir",), "central key generation of ed448 is not supported"),
        ("central:ec:P-999", ("ir",), "unknown key type"),
        ({"central:ec:P-256": 1}, ("p10cr",), "p10cr carries the device's own key"),
    ],
)
def test_central_key_type_mistakes(key_types: object, flow: tuple[str, ...], words: str) -> None:
    with pytest.raises(ProfileError, match=words):
        _profile(key_types, flow)


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[InProcessCa]:
    authority = InProcessCa(tmp_path / "ca")
    authority.server = authority.authority.server(
        config=authority.config, secrets=SharedSecrets(master=MASTER),
        kga=build_kga(tmp_path / "ca", authority.authority.hierarchy),
    )
    yield authority
    authority.close()


async def test_worker_mixes_central_and_local_keys(ca: InProcessCa, autojump_clock: trio.abc.Clock) -> None:
    """ir (MAC: PWRI) then kur signed with the key the ir delivered or generated (KARI when it
    asks for a central key again): every enrollment succeeds, and the CA's records name the
    centrally generated keys and how each was delivered."""
    profile = _profile({"central:ec:P-256": 1, "ec:P-256": 1})
    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    devices = DeviceFactory(profile.devices, pools, master_secret=MASTER, trust=TrustStore([ca.root()]))
    plan = WorkerPlan(profile, "http://127.0.0.1:9/never-used", split(1)[0])
    run = WorkerRun(plan, devices, transport=lambda: ca.transport(latency=0.01))  # type: ignore[arg-type]
    results = await run.run()
    assert results.ops["ir"].ok == results.ops["kur"].ok == 40
    assert results.ops["ir"].failed == results.ops["kur"].failed == 0
    store = ca.authority.store
    store.flush()
    db = sqlite3.connect(store.path)
    by_delivery = dict(db.execute("SELECT delivery, COUNT(*) FROM central_keys GROUP BY delivery"))
    db.close()
    assert set(by_delivery) == {"pwri", "kari"}
    assert 20 <= sum(by_delivery.values()) <= 60  # about half of the 80 enrollments
