"""Drive one sans-I/O ``ClientTransaction`` over HTTP: the only place a transaction meets I/O.

Polling waits happen here (``trio.sleep``), inside the caller's task, so a device that polls
never blocks another. The whole transaction runs under one deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from fleet.cmp.client import ClientTransaction, Done, Send
from fleet.cmp.errors import CmpError
from fleet.http.client import CmpHttpClient
from fleet.http.errors import ConnectTimeout, ReadTimeout


class TransactionTimeout(CmpError):
    """The whole transaction (request, polls, confirmation) did not finish within its deadline."""

    kind = "transaction_timeout"


async def run_transaction(
    client: CmpHttpClient,
    tx: ClientTransaction,
    *,
    path: str | None = None,
    timeout: float | None = None,
    on_exchange: Callable[[Send, float], None] | None = None,
) -> Done:
    """Run ``tx`` to completion against ``client``; every message goes to the same ``path``
    (RFC 9483 §6.1: certConf and pollReq follow their request). ``on_exchange(send, seconds)``
    is told the duration of each HTTP round trip, for metrics.

    ``timeout`` bounds the whole transaction. It is passed down as a deadline that each
    blocking wait (a connection slot, connecting, the socket, a poll's sleep) honours, rather
    than a cancel scope around the transaction: entering and leaving one per transaction cost a
    fleet worker 4-5% of its CPU.
    """
    deadline = None if timeout is None else trio.current_time() + timeout
    try:
        return await _drive(client, tx, path, on_exchange, deadline)
    except (ReadTimeout, ConnectTimeout):
        if deadline is not None and trio.current_time() >= deadline:
            raise TransactionTimeout(f"transaction did not complete within {timeout:g} s") from None
        raise


async def _drive(
    client: CmpHttpClient,
    tx: ClientTransaction,
    path: str | None,
    on_exchange: Callable[[Send, float], None] | None,
    deadline: float | None,
) -> Done:
    event: Send | Done = tx.start()
    while isinstance(event, Send):
        if event.delay:
            if deadline is not None and trio.current_time() + event.delay >= deadline:
                await trio.sleep_until(deadline)
                raise ReadTimeout(client.url, "the transaction's deadline falls before the next poll")
            await trio.sleep(event.delay)
        if on_exchange is None:
            response = await client.post(event.data, path=path, deadline=deadline)
        else:
            sent_at = trio.current_time()
            response = await client.post(event.data, path=path, deadline=deadline)
            on_exchange(event, trio.current_time() - sent_at)
        event = tx.receive(response.body)
    return event
