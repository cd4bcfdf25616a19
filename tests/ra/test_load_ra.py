"""``fleet run`` loading a CA the way an RA does (a profile's ``[ra]`` section): the devices'
requests go in RA-signed nested batches (``NestingTransport``).

In process: one worker's devices over a ``NestingTransport`` to the real CA (``NestedServer``),
in virtual time, far fewer posts than messages. As a command: ``fleet run`` with ``[ra]``
against its embedded CA (which trusts the RA credential made for the run) passes its SLO, and
the profile's ``[ra]`` keys are checked like every other section's (``fleet run`` itself:
tests/cli/test_ra_serve.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from inprocess_ca import MASTER, InProcessCa

from fleet.cmp.nested_server import NestedServer
from fleet.cmp.protection import SignatureProtector
from fleet.cmp.trust import TrustStore
from fleet.keys import KeyPool, KeySpec
from fleet.load.device import DeviceFactory
from fleet.load.profiles import ProfileError, RaLoad, parse_profile
from fleet.load.runner import WorkerPlan, WorkerRun
from fleet.load.segments import split
from fleet.ra.batching import nesting
from fleet.ra.credentials import make_ra_credential
from fleet.transport import CmpTransport, InProcessTransport


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[InProcessCa]:
    authority = InProcessCa(tmp_path / "ca")
    yield authority
    authority.close()


def _profile(batch_size: int) -> dict:  # type: ignore[type-arg]
    return {
        "run": {"duration": 4, "transaction_timeout": 10, "max_in_flight": 200, "flow": ["ir"]},
        "arrivals": {"shape": "constant", "rate": 50},
        "devices": {"count": 1000, "key_types": "ec:P-256"},
        "ra": {"batch_size": batch_size, "batch_wait": 0.05},
    }


async def test_worker_sends_batches_to_the_ca(ca: InProcessCa, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    made = make_ra_credential()
    root = x509.load_pem_x509_certificate(made.root_pem)
    server = NestedServer(ca.authority.server(config=ca.config, secrets=ca.server.secrets, ra_trusted=(root,)))
    upstream = InProcessTransport(server)
    profile = parse_profile(_profile(10), where="test")
    assert profile.ra == RaLoad(batch_size=10, batch_wait=0.05)
    signer = SignatureProtector(load_pem_private_key(made.key_pem, None), x509.load_pem_x509_certificate(made.cert_pem))  # type: ignore[arg-type]

    def inner() -> AbstractAsyncContextManager[CmpTransport]:
        return upstream

    pools = {"ec:P-256": KeyPool(KeySpec.parse("ec:P-256"), (), on_exhausted="generate")}
    devices = DeviceFactory(profile.devices, pools, master_secret=MASTER, trust=TrustStore([ca.root()]))
    plan = WorkerPlan(profile, "http://127.0.0.1:9/never-used", split(1)[0])
    factory = nesting(inner, signer, batch_size=10, batch_wait=0.05, trust=TrustStore([ca.root()]))
    run = WorkerRun(plan, devices, transport=factory)  # type: ignore[arg-type]
    results = await run.run()
    ir = results.ops["ir"]
    assert ir.ok == 200 and ir.failed == 0  # 50/s for 4 s
    # ir and certConf of 200 devices: 400 messages in envelopes of at most 10.
    assert 40 <= upstream.posts < 200
    assert ca.authority.store.counts_by_status()["issued"] == 200


def test_ra_section_keys_are_checked(tmp_path: Path) -> None:
    cases = [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 5000}, "at most 1000"),
        ({"batch_wait": -1}, "batch_wait"),
        ({"cert": "ra.pem"}, "cert and key go together"),
        ({"batchsize": 4}, "batchsize"),
        ({"mode": "pass"}, "needs start = true"),
        ({"start": True, "mode": "forward"}, "pass, nested, replace"),
        ({"start": True, "mode": "replace", "batch_size": 4}, "batches are nested messages"),
    ]
    for section, words in cases:
        data = {**_profile(4), "ra": section}
        with pytest.raises(ProfileError) as err:
            parse_profile(data, where="p.toml", path=tmp_path / "p.toml")
        assert "[ra]" in str(err.value) and words in str(err.value), str(err.value)
    ok = parse_profile({**_profile(4), "ra": {"cert": "ra.pem", "key": "ra.key"}}, where="p.toml",
                       path=tmp_path / "p.toml")
    assert ok.ra is not None and ok.ra.cert == tmp_path / "ra.pem"  # relative to the profile
    started = parse_profile({**_profile(4), "ra": {"start": True}}, where="p.toml").ra
    assert started is not None and (started.start, started.mode, started.batch_size) == (True, "pass", 1)
