"""Nested messages (RFC 9810 §5.1.3.4, RFC 9483 §5.2.2.1): a PKIMessage whose body is PKIMessages.

A PKI management entity (an RA) wraps requests in a nested message to add its own protection
and to batch several end entities' requests; the upstream entity answers with a nested message
holding the responses, which the RA splits back by transactionID. Each inner message keeps its
own header, protection and transaction: the envelope has a transactionID and nonces of its own
(RFC 9483 §3.1), and says only who forwards.

``wrap`` builds a signed envelope, ``unwrap`` reads one strictly (a bounded, non-empty list of
messages that decode, no envelope inside an envelope, one message per transactionID).
``index`` makes the same envelope checks reading only each inner message's header, for a
receiver that hands the messages on whole (the CA's server, the RA's split): decoding each one
twice is what made batches dearer than single messages. ``NestedError`` carries the failInfo a
refusal answers with. No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from fleet.cmp import der
from fleet.cmp.der import DerError
from fleet.cmp.fastwire import decode_header, decode_request
from fleet.cmp.messages import (
    NULL_DN_GENERAL_NAME,
    BodyType,
    FailInfo,
    InfoTypeAndValue,
    MessageError,
    NestedMessageContent,
    PKIHeader,
    PKIMessage,
    assemble,
    directory_name,
    encode_body,
    encode_header,
    protected_part,
)
from fleet.cmp.protection import SignatureProtector
from fleet.errors import FleetError

__all__ = ["MAX_BATCH", "NestedError", "by_transaction", "index", "unwrap", "wrap"]

MAX_BATCH = 1000
"""Inner messages one envelope may carry: a bound on what one request can make the receiver do."""


class NestedError(FleetError):
    """A nested message that cannot be accepted; ``fail`` is the failInfo to answer with."""

    def __init__(self, fail: FailInfo, text: str) -> None:
        super().__init__(text)
        self.fail = fail
        self.text = text


def wrap(
    inner: Sequence[bytes],
    signer: SignatureProtector,
    *,
    transaction_id: bytes,
    sender_nonce: bytes,
    now: float,
    recipient: bytes = NULL_DN_GENERAL_NAME,
    recip_nonce: bytes | None = None,
    general_info: tuple[InfoTypeAndValue, ...] = (),
) -> bytes:
    """A nested message carrying ``inner`` (encoded PKIMessages, unchanged), signed by
    ``signer``: sender its subject, senderKID its SubjectKeyIdentifier, extraCerts its chain
    (RFC 9483 §3.1-3.3). ``recip_nonce`` is set on a response envelope (the request
    envelope's senderNonce)."""
    if not inner:
        raise ValueError("a nested message holds at least one PKIMessage")
    header = PKIHeader(
        sender=directory_name(signer.sender_name),
        recipient=recipient,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        recip_nonce=recip_nonce,
        sender_kid=signer.sender_kid,
        message_time=datetime.fromtimestamp(math.floor(now), UTC),
        protection_alg=signer.algorithm,
        general_info=general_info,
    )
    header_der = encode_header(header)
    body_der = encode_body(BodyType.NESTED, NestedMessageContent(tuple(inner)))
    protection = signer.protect(protected_part(header_der, body_der))
    return assemble(header_der, body_der, protection, signer.extra_certs)


def unwrap(msg: PKIMessage, *, max_messages: int = MAX_BATCH) -> tuple[PKIMessage, ...]:
    """The inner messages of a decoded nested message, in order, each decoded.

    Refused (``NestedError``): no inner message or more than ``max_messages`` (badRequest), an
    inner message that does not decode (badDataFormat), a nested message inside (badRequest:
    one level of forwarding is what fleet's CA accepts), an inner message without a
    transactionID (badRequest) or two with the same one (transactionIdInUse: their responses
    could not be told apart).
    """
    body = msg.body
    if msg.body_type is not BodyType.NESTED or not isinstance(body, NestedMessageContent):
        raise NestedError(FailInfo.badRequest, f"{msg.label} is not a nested message")
    count = len(body.messages)
    if count == 0:
        raise NestedError(FailInfo.badRequest, "nested message holds no PKIMessage")
    if count > max_messages:
        raise NestedError(FailInfo.badRequest, f"nested message holds {count} PKIMessages, more than {max_messages}")
    out: list[PKIMessage] = []
    for index, data in enumerate(body.messages, 1):
        try:
            inner = decode_request(data)
        except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
            raise NestedError(FailInfo.badDataFormat, f"inner message {index} does not decode: {exc}") from None
        if inner.body_type is BodyType.NESTED:
            raise NestedError(FailInfo.badRequest, f"inner message {index} is itself nested")
        if not inner.header.transaction_id:
            raise NestedError(FailInfo.badRequest, f"inner message {index} lacks a transactionID")
        out.append(inner)
    by_transaction(out)
    return tuple(out)


def index(msg: PKIMessage, *, max_messages: int = MAX_BATCH) -> dict[bytes, bytes]:
    """The inner messages of a decoded nested message by transactionID, in order, each as
    received; the checks of ``unwrap`` (same failInfo), except that only each message's frame
    and header are read: a body that does not decode is left to whoever handles the message."""
    body = msg.body
    if msg.body_type is not BodyType.NESTED or not isinstance(body, NestedMessageContent):
        raise NestedError(FailInfo.badRequest, f"{msg.label} is not a nested message")
    count = len(body.messages)
    if count == 0:
        raise NestedError(FailInfo.badRequest, "nested message holds no PKIMessage")
    if count > max_messages:
        raise NestedError(FailInfo.badRequest, f"nested message holds {count} PKIMessages, more than {max_messages}")
    found: dict[bytes, bytes] = {}
    for number, data in enumerate(body.messages, 1):
        try:
            parts = der.parse(data).expect(der.SEQUENCE, "PKIMessage").children()
            if len(parts) < 2:
                raise MessageError("PKIMessage lacks header or body")
            header = decode_header(parts[0])
            nested = parts[1].tag == 0xA0 + int(BodyType.NESTED)
        except (DerError, MessageError, ValueError, IndexError, RecursionError) as exc:
            raise NestedError(FailInfo.badDataFormat, f"inner message {number} does not decode: {exc}") from None
        if nested:
            raise NestedError(FailInfo.badRequest, f"inner message {number} is itself nested")
        tid = header.transaction_id
        if not tid:
            raise NestedError(FailInfo.badRequest, f"inner message {number} lacks a transactionID")
        if tid in found:
            raise NestedError(FailInfo.transactionIdInUse,
                              f"inner message {number} repeats the transactionID of another in the batch")
        found[tid] = data
    return found


def by_transaction(inner: Iterable[PKIMessage]) -> dict[bytes, PKIMessage]:
    """The messages keyed by transactionID; two with one ID are ``NestedError``
    (transactionIdInUse)."""
    found: dict[bytes, PKIMessage] = {}
    for index, msg in enumerate(inner, 1):
        tid = msg.header.transaction_id or b""
        if tid in found:
            raise NestedError(FailInfo.transactionIdInUse,
                              f"inner message {index} repeats the transactionID of another in the batch")
        found[tid] = msg
    return found
