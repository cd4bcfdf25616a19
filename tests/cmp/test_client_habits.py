"""Habits of real CAs that fleet's client accepts, counts and reports (docs/strictness.md), each
over real HTTP on loopback with the full client stack; the safety rules stay refusals
(tests/cmp/test_client_hostile.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
import trio

from fleet.cmp import der, oids
from fleet.cmp.client import ClientConfig
from fleet.cmp.errors import ServerError
from fleet.cmp.habits import WARNINGS
from fleet.cmp.messages import (
    BodyType,
    FailInfo,
    InfoTypeAndValue,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
)

from .ca_stub import CaStub, Reply, error_reply, issue, make_ca
from .test_client_hostile import BOUND, enroll, mac, raw_server, read_request, sig, stub_server


def header_change(**changes: object):  # type: ignore[no-untyped-def]
    def mutate(reply: Reply, request: PKIMessage) -> Reply:
        return dataclasses.replace(reply, header=dataclasses.replace(reply.header, **changes))  # type: ignore[arg-type]

    return mutate


async def enrolled(stub: CaStub, config: ClientConfig) -> tuple[str, ...]:
    """Enroll over real HTTP; the warnings of the (successful) transaction."""
    async with stub_server(stub) as url:
        with trio.fail_after(BOUND):
            _, done = await enroll(url, config)
    assert done.certificate is not None and done.status.status == PKIStatus.ACCEPTED
    return done.warnings


@pytest.mark.parametrize(("offset", "warned"), [(timedelta(hours=-2), True), (timedelta(hours=3), True),
                                                  (timedelta(seconds=-60), False)])
async def test_message_time_skew_is_accepted_and_reported(offset: timedelta, warned: bool) -> None:
    """messageTime is informational (RFC 9483 §3.1): a CA with a wrong clock still enrolls."""
    when = (datetime.now(UTC) + offset).replace(microsecond=0)
    stub = CaStub(mutate=header_change(message_time=when))
    warnings = await enrolled(stub, mac(stub))
    assert warnings == (("message_time_skew",) if warned else ())


async def test_a_clock_in_the_past_is_checked_against_the_configured_skew() -> None:
    stub = CaStub(mutate=header_change(message_time=(datetime.now(UTC) - timedelta(seconds=90)).replace(microsecond=0)))
    assert await enrolled(stub, dataclasses.replace(mac(stub), time_skew_warning=30)) == ("message_time_skew",)


async def test_unknown_general_info_is_ignored_and_reported() -> None:
    item = InfoTypeAndValue("1.3.6.1.4.1.99999.1", der.utf8_string("vendor hint"))
    stub = CaStub(mutate=header_change(general_info=(item,)))
    assert await enrolled(stub, mac(stub)) == ("unknown_general_info",)


async def test_known_general_info_is_no_warning() -> None:
    item = InfoTypeAndValue(oids.IT_CONFIRM_WAIT_TIME, der.generalized_time(datetime.now(UTC) + timedelta(minutes=5)))
    stub = CaStub(mutate=header_change(general_info=(item,)))
    assert await enrolled(stub, mac(stub)) == ()


@pytest.mark.parametrize("protection", ["mac", "signature"])
async def test_unrelated_extra_certs_are_accepted_and_never_trusted(protection: str) -> None:
    """RFC 9483 §3.3 lets extraCerts carry more than the chain; they are material, not trust."""
    stranger = make_ca("Stranger Root")
    junk = (stranger.der, issue(stranger, "stranger leaf").der)

    def pad(reply: Reply, request: PKIMessage) -> Reply:
        return dataclasses.replace(reply, extra_certs=(*reply.extra_certs, *junk))

    stub = CaStub(ca_pubs=False, mutate=pad)
    config = mac(stub) if protection == "mac" else sig(stub)
    assert await enrolled(stub, config) == ()
    assert all(a.subject != stranger.cert.subject for a in (config.trust.anchors if config.trust else []))


@pytest.mark.parametrize("status", [202, 500])
async def test_cmp_body_with_another_http_status_is_read_and_reported(status: int) -> None:
    """A CMP body is a CMP answer whatever the HTTP status (RFC 9811): it is verified like any
    other. A positive one under a non-200 status enrolls with the warning; the same status on a
    CMP error shows the CA's own refusal, not an HTTP error."""
    stub = CaStub()

    async def serve(stream: trio.SocketStream) -> None:
        while True:
            body = stub.answer(await read_request(stream))
            await stream.send_all(
                b"HTTP/1.1 %d Whatever\r\nContent-Type: application/pkixcmp\r\nContent-Length: %d\r\n\r\n"
                % (status, len(body)) + body
            )

    async with raw_server(serve) as url:
        with trio.fail_after(BOUND):
            _, done = await enroll(url, mac(stub))
    assert done.certificate is not None and done.warnings == ("http_status",)
    refusal = PKIStatusInfo(PKIStatus.REJECTION, ("not today",), FailInfo.badRequest.mask)
    stub.mutate = lambda reply, request: error_reply(stub, request, refusal)
    async with raw_server(serve) as url:
        with trio.fail_after(BOUND), pytest.raises(ServerError) as info:
            await enroll(url, mac(stub))
    assert info.value.fail_names == ("badRequest",) and "not today" in str(info.value)


async def test_connection_close_after_every_answer_is_followed() -> None:
    """A CA that closes after each answer (Connection: close, body delimited by the close): the
    certConf goes out on a new connection and the enrollment completes, without a warning."""
    stub = CaStub()
    connections = []

    async def serve(stream: trio.SocketStream) -> None:
        connections.append(1)
        body = stub.answer(await read_request(stream))
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\nConnection: close\r\n\r\n" + body)

    async with raw_server(serve) as url:
        with trio.fail_after(BOUND):
            _, done = await enroll(url, mac(stub))
    assert done.certificate is not None and done.warnings == ()
    assert len(connections) == 2 and [m.body_type for m in stub.received] == [BodyType.IR, BodyType.CERTCONF]


def test_every_warning_has_a_one_line_explanation() -> None:
    assert set(WARNINGS) == {"capubs_ignored", "message_time_skew", "unknown_general_info", "http_status"}
    assert all(text and "\n" not in text for text in WARNINGS.values())
