"""The one drive loop, ``run_transaction``, over the in-process transport to fleet's real CA: the
whole-transaction deadline, polling, the before-certConf hook, resuming, in virtual time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from inprocess_ca import Deferring, InProcessCa, name, new_key

from fleet.cmp import genm, messages
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.messages import BodyType, PKIStatus
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest, GeneralRequest
from fleet.cmp.trust import load_cert
from fleet.exchange import TransactionTimeout, run_transaction
from fleet.transport import (
    CmpResponse,
    CmpTransport,
    InProcessTransport,
    TransportError,
    TransportTimeout,
)


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[InProcessCa]:
    authority = InProcessCa(tmp_path / "ca")
    yield authority
    authority.close()


class Recording:
    """A transport in front of another: logs (virtual time, message type, path) of every post."""

    def __init__(self, inner: CmpTransport) -> None:
        self.inner = inner
        self.log: list[tuple[float, str, str | None]] = []

    async def post(
        self, data: bytes, /, *, path: str | None = None, deadline: float | None = None
    ) -> CmpResponse:
        self.log.append((trio.current_time(), messages.decode(data).label, path))
        return await self.inner.post(data, path=path, deadline=deadline)


def enrollment(ca: InProcessCa, **kw: object) -> ClientTransaction:
    return ClientTransaction(
        ca.mac_config(), CertRequest(BodyType.IR, new_key(), name("dev-1"), **kw)
    )  # type: ignore[arg-type]


async def test_enrollment_round_trips_are_timed_for_metrics(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    transport = Recording(ca.transport(latency=0.25))
    seen: list[tuple[str, float]] = []
    start = trio.current_time()
    done = await run_transaction(
        transport,
        enrollment(ca),
        path="/.well-known/cmp",
        timeout=5,
        on_exchange=lambda send, seconds: seen.append((send.body_type.label, seconds)),
    )
    assert done.certificate and trio.current_time() - start == 0.5
    assert seen == [("ir", 0.25), ("certConf", 0.25)]
    assert [(label, path) for _, label, path in transport.log] == [
        ("ir", "/.well-known/cmp"),
        ("certConf", "/.well-known/cmp"),
    ]


async def test_before_confirm_runs_once_after_the_certificate_and_before_certconf(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """The caller holds the certificate (here: takes 5 s to store it) before it is confirmed."""
    transport = Recording(ca.transport())
    calls: list[tuple[float, Done, bytes]] = []

    async def store(result: Done, response: bytes) -> str | None:
        calls.append((trio.current_time(), result, response))
        assert [label for _, label, _ in transport.log] == ["ir"]  # nothing confirmed yet
        assert ca.counts() == {"pending": 1}
        await trio.sleep(5)
        return None

    done = await run_transaction(transport, enrollment(ca), timeout=60, before_confirm=store)
    ((at, result, response),) = calls
    assert result.certificate == done.certificate and result.extra_certs == done.extra_certs
    assert messages.decode(response).body_type is BodyType.IP  # the bytes that carried it
    assert [(t - at, label) for t, label, _ in transport.log] == [(0, "ir"), (5, "certConf")]
    assert done.status.status == PKIStatus.ACCEPTED and ca.counts() == {"issued": 1}


async def test_no_certconf_once_the_deadline_passed_during_before_confirm(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """The hook is not cancelled (a half-written store is worse than a late one); the certConf
    is then not sent, and the certificate waits for confirmWaitTime (or a resumed certConf)."""
    transport = Recording(ca.transport())

    async def slow_store(result: Done, response: bytes) -> str | None:
        await trio.sleep(5)
        return None

    start = trio.current_time()
    with pytest.raises(TransactionTimeout):
        await run_transaction(transport, enrollment(ca), timeout=3, before_confirm=slow_store)
    assert trio.current_time() - start == 5
    assert [label for _, label, _ in transport.log] == ["ir"] and ca.counts() == {"pending": 1}


async def test_before_confirm_can_reject_the_certificate(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    async def cannot_store(result: Done, response: bytes) -> str | None:
        return "the certificate could not be stored"

    transport = ca.transport()
    done = await run_transaction(transport, enrollment(ca), timeout=60, before_confirm=cannot_store)
    assert done.certificate is None and done.status.status == PKIStatus.REJECTION
    assert done.status.texts == ("the certificate could not be stored",)
    assert ca.counts() == {"rejected": 1}  # the CA revoked it at once, not at confirmWaitTime


async def test_before_confirm_is_not_called_without_a_certificate_to_confirm(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """genm has no certificate; an ir the CA confirms implicitly has no certConf."""
    ca = InProcessCa(tmp_path / "ca", grant_implicit_confirm=True)
    called: list[object] = []

    async def hook(result: Done, response: bytes) -> str | None:
        called.append(result)
        return "no"

    try:
        transport = ca.transport()
        tx = ClientTransaction(ca.mac_config(), GeneralRequest((genm.ca_certs_request(),)))
        await run_transaction(transport, tx, timeout=5, before_confirm=hook)
        done = await run_transaction(
            transport, enrollment(ca, implicit_confirm=True), timeout=5, before_confirm=hook
        )
        assert done.implicit_confirm and done.certificate
        assert called == []
    finally:
        ca.close()


async def test_polling_follows_check_after_in_virtual_time(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """ir answered "waiting" (30 s): pollReq at once, pollRep checkAfter 30, pollReq 30 s later."""
    transport = Recording(InProcessTransport(Deferring(ca.server, 30)))
    start = trio.current_time()
    done = await run_transaction(transport, enrollment(ca), timeout=60)
    assert done.certificate and done.polls == 2
    assert [(t - start, label) for t, label, _ in transport.log] == [
        (0, "ir"),
        (0, "pollReq"),
        (30, "pollReq"),
        (30, "certConf"),
    ]


async def test_a_poll_past_the_deadline_times_the_transaction_out_at_the_deadline(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    transport = Recording(InProcessTransport(Deferring(ca.server, 30)))
    start = trio.current_time()
    with pytest.raises(TransactionTimeout, match="did not complete within 20 s") as info:
        await run_transaction(transport, enrollment(ca), timeout=20)
    assert trio.current_time() - start == 20 and info.value.kind == "transaction_timeout"
    assert [label for _, label, _ in transport.log] == [
        "ir",
        "pollReq",
    ]  # the next poll was never sent


async def test_a_slow_answer_times_the_transaction_out_at_the_deadline(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """One deadline for the whole transaction: ir takes 4 s, certConf would end at 8 > 6."""
    transport = ca.transport(latency=4)
    start = trio.current_time()
    with pytest.raises(TransactionTimeout):
        await run_transaction(transport, enrollment(ca), timeout=6)
    assert trio.current_time() - start == 6
    assert ca.counts() == {"pending": 1}  # left unconfirmed: the CA rejects it at confirmWaitTime


async def test_a_transport_timeout_before_the_deadline_stays_a_transport_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A transport's own timeout (HTTP's request timeout) is not the transaction's."""

    class GivesUp:
        async def post(
            self, data: bytes, /, *, path: str | None = None, deadline: float | None = None
        ) -> CmpResponse:
            await trio.sleep(1)
            raise TransportTimeout("stub", "no answer within 1 s")

    tx = ClientTransaction(
        ClientConfig(MacProtector(b"secret", reference=b"dev-1")),
        CertRequest(BodyType.IR, new_key(), name("dev-1")),
    )
    start = trio.current_time()
    with pytest.raises(TransportTimeout) as info:
        await run_transaction(GivesUp(), tx, timeout=10)
    assert type(info.value) is TransportTimeout and isinstance(info.value, TransportError)
    assert trio.current_time() - start == 1


async def test_resume_continues_a_transaction_started_elsewhere(
    ca: InProcessCa, autojump_clock: trio.abc.Clock
) -> None:
    """As provisioning does after a crash: the stored ip is fed to a transaction, and the certConf
    it produces is sent through the same loop."""
    transport = Recording(ca.transport())
    tx = enrollment(ca)
    ip = await transport.post(tx.start().data)
    certconf = tx.receive(ip.body)
    assert isinstance(certconf, Send) and certconf.body_type is BodyType.CERTCONF
    done = await run_transaction(transport, tx, timeout=5, resume=certconf)
    assert done.certificate and load_cert(done.certificate)
    assert [label for _, label, _ in transport.log] == ["ir", "certConf"]
    assert ca.counts() == {"issued": 1}
