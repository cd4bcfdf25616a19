"""Batches of messages in RA-signed nested envelopes, as a transport (RFC 9483 §5.2.2.1).

``NestingTransport`` is a ``CmpTransport`` over another: each message posted waits for a batch,
which leaves as one nested message signed with the RA's credential when it holds
``batch_size`` messages or ``batch_wait`` seconds after its first; the answer envelope is
verified (``open_envelope``) and split back by transactionID, each caller getting its own
inner answer. A batch never holds two messages of one transaction: a second one waits for the
next batch. ``fleet ra serve`` batches through it, and ``fleet run`` with an ``[ra]`` profile
section loads a CA's RA interface with it, without an RA process.

When no answer for a message can be had, ``post`` raises a ``TransportError``: the upstream's
own (connect, timeout ...), or ``EnvelopeRefused`` (kind ``nested_refused``) when the upstream
answered the envelope with an error or with something that does not verify, carrying the
failInfo to pass on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio
from cryptography import x509

from fleet.cmp.der import DerError
from fleet.cmp.fastwire import decode_request
from fleet.cmp.messages import ErrorMsgContent, FailInfo, MessageError
from fleet.cmp.nested import NestedError, index, wrap
from fleet.cmp.protection import ProtectionError, SignatureProtector, verify_signature
from fleet.cmp.trust import TrustStore, UntrustedSigner, find_signer, load_cert
from fleet.cmp.x509parts import short_text
from fleet.randomness import RandomPool
from fleet.records import record
from fleet.transport import CmpTransport, TransportError

__all__ = ["EnvelopeRefused", "NestingTransport", "nesting", "open_envelope"]


class EnvelopeRefused(TransportError):
    """The upstream's answer to an envelope holds no answer for this message."""

    kind = "nested_refused"

    def __init__(self, peer: str, problem: str, fail: FailInfo) -> None:
        super().__init__(peer, problem)
        self.fail = fail


def open_envelope(
    data: bytes, tid: bytes, nonce: bytes, now: float, *, trust: TrustStore | None,
    untrusted: tuple[x509.Certificate, ...] = (),
) -> dict[bytes, bytes]:
    """The inner answers of an upstream envelope by transactionID, once its transactionID,
    recipNonce and (with ``trust``) signature check out. ``EnvelopeRefused`` otherwise, with
    the upstream's failInfo when it answered the envelope with an error."""
    try:
        msg = decode_request(data)
    except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
        raise _refused(FailInfo.systemFailure, f"upstream answer does not decode: {short_text(exc)}") from None
    if msg.header.transaction_id != tid:
        raise _refused(FailInfo.systemFailure, "upstream answer has another transactionID than the envelope")
    if msg.header.recip_nonce != nonce:
        raise _refused(FailInfo.systemFailure, "upstream answer's recipNonce does not echo the envelope")
    if trust is not None:
        h = msg.header
        if msg.protection is None or h.protection_alg is None:
            raise _refused(FailInfo.systemFailure, "upstream answer is not protected")
        try:
            signer = find_signer(msg.extra_certs, h.sender_kid)
            verify_signature(h.protection_alg, signer.public_key(), msg.protected_part, msg.protection)
            trust.verify(signer, [load_cert(c) for c in msg.extra_certs] + list(untrusted),
                         at=datetime.fromtimestamp(now, UTC))
        except (ProtectionError, UntrustedSigner, ValueError, TypeError) as exc:
            raise _refused(FailInfo.systemFailure, f"upstream answer fails verification: {short_text(exc)}") from None
    if isinstance(msg.body, ErrorMsgContent):
        status = msg.body.status
        fail = next((f for f in FailInfo if status.fail_info and status.fail_info >> f.value & 1), FailInfo.systemFailure)
        raise _refused(fail, "upstream refused the batch: " + "; ".join(status.texts)[:150])
    try:
        return index(msg)
    except NestedError as exc:
        raise _refused(FailInfo.systemFailure, f"upstream answer envelope: {exc.text}") from None


def _refused(fail: FailInfo, text: str) -> EnvelopeRefused:
    return EnvelopeRefused("upstream", text, fail)


@record
class _Answer:
    body: bytes


@dataclass(slots=True)
class _BatchWaiter:
    tid: bytes
    data: bytes
    done: trio.Event = field(default_factory=trio.Event)
    answer: bytes | None = None
    error: TransportError | None = None


class NestingTransport:
    """A ``CmpTransport`` that batches into signed envelopes (module doc). Made by ``nesting``,
    which also runs its batch tasks."""

    def __init__(
        self,
        upstream: CmpTransport,
        signer: SignatureProtector,
        nursery: trio.Nursery,
        *,
        batch_size: int,
        batch_wait: float,
        trust: TrustStore | None = None,
        untrusted: tuple[x509.Certificate, ...] = (),
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_batch: Callable[[int, float, str], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.signer = signer
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.trust = trust
        self.untrusted = untrusted
        self.timeout = timeout
        self.clock = clock
        self.on_batch = on_batch  # (size, seconds, transport error kind or "")
        self.envelopes = 0
        self._nursery = nursery
        self._random = RandomPool().take
        self._batch: list[_BatchWaiter] = []
        self._generation = 0

    async def post(self, data: bytes, /, *, path: str | None = None, deadline: float | None = None) -> _Answer:
        """The upstream's answer to ``data``, which goes in the next batch that has no message
        of its transaction (``path`` is not used: an envelope goes to the upstream's URL)."""
        try:
            tid = decode_request(data).header.transaction_id or b""
        except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
            raise ValueError(f"cannot batch a message that does not decode: {short_text(exc)}") from None
        while any(w.tid == tid for w in self._batch):
            await trio.sleep(self.batch_wait or 0.001)  # the next batch takes it
        waiter = _BatchWaiter(tid, data)
        self._batch.append(waiter)
        if len(self._batch) >= self.batch_size:
            self._flush()
        elif len(self._batch) == 1:
            self._nursery.start_soon(self._flush_later, self._generation)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.answer is not None
        return _Answer(waiter.answer)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._generation += 1
        self._nursery.start_soon(self._send, batch)

    async def _flush_later(self, generation: int) -> None:
        await trio.sleep(self.batch_wait)
        if generation == self._generation and self._batch:
            self._flush()

    async def _send(self, batch: list[_BatchWaiter]) -> None:
        started = time.perf_counter()
        error = ""
        try:
            tid, nonce = self._random(16), self._random(16)
            envelope = wrap([w.data for w in batch], self.signer, transaction_id=tid, sender_nonce=nonce,
                            now=self.clock())
            self.envelopes += 1
            response = await self.upstream.post(envelope, deadline=trio.current_time() + self.timeout)
            answers = open_envelope(response.body, tid, nonce, self.clock(), trust=self.trust,
                                    untrusted=self.untrusted)
            for w in batch:
                w.answer = answers.get(w.tid)
                if w.answer is None:
                    w.error = _refused(FailInfo.systemFailure, "upstream answered no message for this transaction")
        except TransportError as exc:
            error = exc.kind
            for w in batch:
                w.error = exc
        except Exception as exc:  # noqa: BLE001  # a bug costs this batch its answers, not the caller's run
            error = "internal"
            for w in batch:
                w.error = TransportError("upstream", f"batch failed: {type(exc).__name__}: {short_text(exc)}",
                                         kind="internal")
        finally:
            for w in batch:
                w.done.set()
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started, error)


def nesting(
    upstream: Callable[[], AbstractAsyncContextManager[CmpTransport]],
    signer: SignatureProtector,
    **options: object,
) -> Callable[[], AbstractAsyncContextManager[NestingTransport]]:
    """A ``TransportFactory``: ``upstream()`` opened, a ``NestingTransport`` over it with
    ``options`` (``NestingTransport``'s keywords), its batch tasks running while it is open."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[NestingTransport]:
        async with upstream() as inner, trio.open_nursery() as nursery:
            yield NestingTransport(inner, signer, nursery, **options)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()

    return factory
