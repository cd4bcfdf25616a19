"""The transport seam: CmpHttpClient's shape and error family, and the in-process transport over
fleet's real CA, in virtual time (trio's MockClock) and without sockets."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from inprocess_ca import InProcessCa, name, new_key

from fleet.cmp.client import ClientTransaction, Done
from fleet.cmp.messages import BodyType
from fleet.cmp.requests import CertRequest
from fleet.http import errors as http_errors
from fleet.http.client import CmpHttpClient, CmpHttpResponse
from fleet.transport import (
    CmpTransport,
    InProcessResponse,
    InProcessTransport,
    TransportError,
    TransportTimeout,
    trio_wall_clock,
)


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[InProcessCa]:
    authority = InProcessCa(tmp_path / "ca", confirm_wait=60.0)
    yield authority
    authority.close()


def _keyword_names(fn: object) -> set[str]:
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


@pytest.mark.parametrize("transport", [CmpHttpClient, InProcessTransport])
def test_transports_have_the_protocols_shape(transport: type) -> None:
    """post(data, *, path, deadline) -> something with .body: what run_transaction calls."""
    protocol = inspect.signature(CmpTransport.post)
    assert list(protocol.parameters)[1:] == ["data", "path", "deadline"]
    post = inspect.signature(transport.post)
    params = list(post.parameters.values())
    assert params[1].kind in (params[1].POSITIONAL_ONLY, params[1].POSITIONAL_OR_KEYWORD)
    assert {"path", "deadline"} <= _keyword_names(transport.post)
    assert all(p.default is not p.empty for p in params[2:])  # nothing else required
    assert inspect.iscoroutinefunction(transport.post)
    assert hasattr(transport, "__aenter__") and hasattr(
        transport, "__aexit__"
    )  # a TransportFactory's product
    for response in (CmpHttpResponse, InProcessResponse):  # CmpResponse: the body, as bytes
        assert response.__dataclass_fields__["body"].type == "bytes"


def test_http_errors_are_the_transport_family_with_bounded_kinds() -> None:
    assert http_errors.TransportError is TransportError  # one family, re-exported
    members = [getattr(http_errors, n) for n in http_errors.__all__ if n not in ("InvalidUrl",)]
    assert all(issubclass(cls, TransportError) for cls in members)
    assert issubclass(http_errors.ReadTimeout, TransportTimeout)
    assert issubclass(http_errors.ConnectTimeout, TransportTimeout)
    assert not issubclass(
        http_errors.InvalidUrl, TransportError
    )  # a usage error, not a failed exchange
    kinds = {
        http_errors.ConnectError("http://ca/", "refused").kind,
        http_errors.ConnectTimeout("http://ca/", "slow").kind,
        http_errors.ReadTimeout("http://ca/", "slow").kind,
        http_errors.ConnectionLost("http://ca/", "reset").kind,
        http_errors.ProtocolError("http://ca/", "junk").kind,
        http_errors.ResponseTooLarge("http://ca/", 10).kind,
        http_errors.HttpStatusError("http://ca/", 503, "text/html").kind,
        http_errors.HttpStatusError("http://ca/", 999, None).kind,
        TransportTimeout("in-process CA", "late").kind,
        TransportError("x", "y").kind,
    }
    assert kinds == {
        "connect",
        "connect_timeout",
        "timeout",
        "connection_lost",
        "protocol",
        "too_large",
        "http_503",
        "http_other",
        "transport",
    }
    error = http_errors.ConnectError("http://ca.example/pkix/", "line one\nline two")
    assert (
        error.peer == "http://ca.example/pkix/"
        and str(error) == "http://ca.example/pkix/: line one line two"
    )


async def test_in_process_enrollment_without_sockets(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """ir, ip, certConf, pkiConf: each post is the server's answer, and what it made of it."""
    transport = ca.transport()
    key = new_key()
    tx = ClientTransaction(ca.mac_config(), CertRequest(BodyType.IR, key, name("dev-1")))
    async with transport as t:
        ip = await t.post(tx.start().data)
        assert (ip.outcome.request, ip.outcome.status) == ("ir", "accepted")
        certconf = tx.receive(ip.body)
        pkiconf = await t.post(certconf.data, path="/ignored")  # one server: the path is not used
        assert ip.outcome.serial is not None and pkiconf.outcome.request == "certConf"
        done = tx.receive(pkiconf.body)
    assert isinstance(done, Done) and done.certificate
    assert transport.posts == 2 and ca.counts() == {"issued": 1}


async def test_latency_and_deadline_in_virtual_time(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    transport = ca.transport(latency=2.5)
    tx = ClientTransaction(ca.mac_config(), CertRequest(BodyType.IR, new_key(), name("dev-1")))
    start = trio.current_time()
    ip = await transport.post(tx.start().data, deadline=start + 10)
    assert trio.current_time() - start == 2.5
    certconf = tx.receive(ip.body)
    start = trio.current_time()
    with pytest.raises(TransportTimeout) as info:
        await transport.post(certconf.data, deadline=start + 1)
    assert trio.current_time() - start == 1  # waited until the deadline, not the latency
    assert info.value.kind == "timeout" and str(info.value).startswith("in-process CA: no answer")
    assert transport.posts == 1  # the server never saw the late certConf


async def test_a_deadline_already_past_is_not_handled(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    transport = ca.transport()
    tx = ClientTransaction(ca.mac_config(), CertRequest(BodyType.IR, new_key(), name("dev-1")))
    with pytest.raises(TransportTimeout):
        await transport.post(tx.start().data, deadline=trio.current_time())
    assert transport.posts == 0 and ca.counts() == {}


def test_latency_must_not_be_negative(ca: InProcessCa) -> None:
    with pytest.raises(ValueError, match="latency must be >= 0"):
        ca.transport(latency=-1)


async def test_trio_wall_clock_starts_at_the_wall_time_and_follows_the_mock(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = trio_wall_clock()
    first = clock()
    assert abs(first - time.time()) < 5
    await trio.sleep(3600)
    assert clock() - first == pytest.approx(3600)


async def test_tick_expires_an_unconfirmed_certificate_at_the_servers_virtual_time(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """The server lives in trio's (mock) time: confirmWaitTime runs out after 60 virtual seconds."""
    transport = ca.transport()
    tx = ClientTransaction(ca.mac_config(), CertRequest(BodyType.IR, new_key(), name("dev-1")))
    ip = await transport.post(tx.start().data)  # ip received, certConf never sent
    await trio.sleep(59)
    assert transport.tick() == [] and ca.server.live_transactions == 1
    await trio.sleep(2)
    (outcome,) = transport.tick()
    assert (outcome.request, outcome.status, outcome.fail_names) == (
        "tick",
        "confirm_timeout",
        ("systemUnavail",),
    )
    assert ip.outcome.serial == outcome.serial
    assert ca.server.live_transactions == 0 and ca.counts() == {"rejected": 1}
