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
    is told the duration of each HTTP round trip, for metrics."""
    if timeout is None:  # no deadline: no cancel scope to enter and leave (per-enrollment CPU)
        return await _drive(client, tx, path, on_exchange)
    with trio.move_on_after(timeout) as scope:
        return await _drive(client, tx, path, on_exchange)
    assert scope.cancelled_caught
    raise TransactionTimeout(f"transaction did not complete within {timeout:g} s")


async def _drive(
    client: CmpHttpClient,
    tx: ClientTransaction,
    path: str | None,
    on_exchange: Callable[[Send, float], None] | None,
) -> Done:
    event: Send | Done = tx.start()
    while isinstance(event, Send):
        if event.delay:
            await trio.sleep(event.delay)
        if on_exchange is None:
            response = await client.post(event.data, path=path)
        else:
            sent_at = trio.current_time()
            response = await client.post(event.data, path=path)
            on_exchange(event, trio.current_time() - sent_at)
        event = tx.receive(response.body)
    return event
