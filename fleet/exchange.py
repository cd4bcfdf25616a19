"""Drive one sans-I/O ``ClientTransaction`` over a ``CmpTransport``: the one drive loop, where a
transaction meets I/O for load runs, provisioning and the CLI.

Polling waits happen here (``trio.sleep``), inside the caller's task, so a device that polls
never blocks another. The whole transaction runs under one deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from fleet.cmp.client import ClientTransaction, Done, Send
from fleet.cmp.errors import CmpError
from fleet.cmp.messages import BodyType
from fleet.transport import CmpTransport, TransportTimeout

__all__ = ["BeforeConfirm", "TransactionTimeout", "run_transaction"]

#: ``before_confirm(result, response)``: the certificate has arrived (``result``, from the
#: ``response`` bytes that carried it) and certConf is next. None confirms it; a text rejects it.
BeforeConfirm = Callable[[Done, bytes], Awaitable[str | None]]


class TransactionTimeout(CmpError):
    """The whole transaction (request, polls, confirmation) did not finish within its deadline."""

    kind = "transaction_timeout"


async def run_transaction(
    transport: CmpTransport,
    tx: ClientTransaction,
    *,
    path: str | None = None,
    timeout: float | None = None,
    on_exchange: Callable[[Send, float], None] | None = None,
    before_confirm: BeforeConfirm | None = None,
    resume: Send | None = None,
) -> Done:
    """Run ``tx`` to completion over ``transport``; every message goes to the same ``path``
    (RFC 9483 §6.1: certConf and pollReq follow their request). ``on_exchange(send, seconds)``
    is told the duration of each round trip, for metrics.

    ``before_confirm`` is awaited once the certificate has arrived, before the certConf is
    sent (a caller that must hold the certificate durably before confirming it); when it
    returns a text, the certificate is rejected in certConf with that text instead
    (``ClientTransaction.reject_certificate``). It is not cancelled at the deadline; a
    certConf whose deadline passed meanwhile is not sent (``TransactionTimeout``). ``resume`` continues a transaction that was
    started elsewhere (fed a stored response): that message is sent first, not ``tx.start()``.

    ``timeout`` bounds the whole transaction. It is passed down as a deadline that each
    blocking wait (the transport's, a poll's sleep) honours, rather than a cancel scope around
    the transaction: entering and leaving one per transaction costs a load worker measurably.
    """
    deadline = None if timeout is None else trio.current_time() + timeout
    try:
        return await _drive(
            transport,
            tx,
            tx.start() if resume is None else resume,
            path,
            on_exchange,
            before_confirm,
            deadline,
        )
    except TransportTimeout:
        if deadline is not None and trio.current_time() >= deadline:
            raise TransactionTimeout(f"transaction did not complete within {timeout:g} s") from None
        raise


async def _drive(
    transport: CmpTransport,
    tx: ClientTransaction,
    event: Send | Done,
    path: str | None,
    on_exchange: Callable[[Send, float], None] | None,
    before_confirm: BeforeConfirm | None,
    deadline: float | None,
) -> Done:
    while isinstance(event, Send):
        if event.delay:
            if deadline is not None and trio.current_time() + event.delay >= deadline:
                await trio.sleep_until(deadline)  # run_transaction makes it a TransactionTimeout
                raise TransportTimeout(
                    "poll", "the transaction's deadline falls before the next poll"
                )
            await trio.sleep(event.delay)
        if on_exchange is None:
            response = await transport.post(event.data, path=path, deadline=deadline)
        else:
            sent_at = trio.current_time()
            response = await transport.post(event.data, path=path, deadline=deadline)
            on_exchange(event, trio.current_time() - sent_at)
        body = response.body
        if getattr(response, "status", 200) != 200:
            tx.warn("http_status")  # a CMP body with another status: accepted, reported
        event = tx.receive(body)
        if (
            before_confirm is not None
            and isinstance(event, Send)
            and event.body_type is BodyType.CERTCONF
        ):
            result = tx.result
            if result is not None and result.certificate is not None:
                reason = await before_confirm(result, body)
                if reason is not None:
                    event = tx.reject_certificate(reason)
                if deadline is not None and trio.current_time() >= deadline:
                    # Not sent: a transport may send before it notices the deadline, and a
                    # certConf the caller never sees answered is worse than one not sent.
                    raise TransportTimeout("certConf", "the deadline passed before certConf")
    return event
