"""The CA's side of nested messages (RFC 9483 §5.2.2.1): a ``CmpServer`` that also takes requests
an RA forwarded with its own protection, alone or batched.

``NestedServer.handle`` hands every other message to the wrapped ``CmpServer`` untouched. A
nested one is accepted only from an RA the CA trusts (``ra_trust``, ``fleet ca serve
--ra-trusted``), checked in this order, each failure one error message answering the envelope:

* the envelope is signed (a MAC-protected envelope: notAuthorized), by a certificate named by
  sender and senderKID that chains to an RA anchor (signerNotTrusted otherwise) and that the
  CA's records do not refuse, with a good header (pvno, transactionID, senderNonce, time);
* its body is a bounded list of messages whose headers read, none nested, one per
  transactionID (``nested.index``: badRequest, badDataFormat, transactionIdInUse).

Then each inner message is handled by the wrapped server exactly as if it had come alone: its
own protection, header and transaction are checked, and a bad inner MAC costs that message
its answer (an error inside the response envelope), not the others theirs. The answer is in
kind: a nested message holding the inner responses in order, signed by the CA's CMP signer,
its recipNonce the envelope's senderNonce. raVerified POP is decided by the wrapped server:
only a request (inner or not) signed by a trusted RA may carry it.
"""

from __future__ import annotations

from collections.abc import Callable

from fleet.cmp import der
from fleet.cmp.backend import Rejected
from fleet.cmp.der import DerError
from fleet.cmp.fastwire import decode_request
from fleet.cmp.messages import (
    BodyType,
    ErrorMsgContent,
    FailInfo,
    MessageError,
    NestedMessageContent,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
)
from fleet.cmp.nested import NestedError, index
from fleet.cmp.protection import is_mac_algorithm
from fleet.cmp.server import CmpServer, Outcome, Reply, ServerStatistics, TxState
from fleet.cmp.server_auth import NO_AUTH, Authenticator, Refuse, ResponseWriter
from fleet.cmp.trust import TrustStore
from fleet.randomness import RandomPool

__all__ = ["NestedServer", "is_nested", "is_nested_reference"]

_read_tlv = der.read_tlv

_NESTED_TAG = 0xA0 + int(BodyType.NESTED)  # [20], constructed


def is_nested(data: bytes) -> bool:
    """Whether ``data`` looks like a PKIMessage with a nested body: the tag after the header.
    Asked of every request the CA receives, so it reads the two TLV heads with the codec's
    ``read_tlv`` (C where built); anything that is not DER there is False, and the full decoder
    answers it as it would without this look (tests/cmp/test_nested_look.py holds it to
    ``is_nested_reference``)."""
    try:
        _, pos, end = _read_tlv(data, 0, len(data))
        _, _, after_header = _read_tlv(data, pos, end)
        return after_header < end and data[after_header] == _NESTED_TAG
    except (DerError, IndexError, TypeError):
        return False


def is_nested_reference(data: bytes) -> bool:
    """``is_nested``'s reference: a lenient walk of the two lengths in Python (any length form
    of up to four octets), the earlier implementation."""
    try:
        pos = _skip_head(data, 0)
        return data[_skip_tlv(data, pos)] == _NESTED_TAG
    except IndexError:
        return False


def _length(data: bytes, pos: int) -> tuple[int, int]:
    """(content start, content length) of the TLV whose length octets start at ``pos``."""
    first = data[pos]
    if first < 0x80:
        return pos + 1, first
    n = first & 0x7F
    if not 1 <= n <= 4:
        raise IndexError("unusual length")
    return pos + 1 + n, int.from_bytes(data[pos + 1 : pos + 1 + n], "big")


def _skip_head(data: bytes, pos: int) -> int:
    start, _ = _length(data, pos + 1)
    return start


def _skip_tlv(data: bytes, pos: int) -> int:
    start, length = _length(data, pos + 1)
    return start + length


class NestedServer:
    """``CmpServer`` plus nested messages from trusted RAs (module doc). ``inner_outcomes``
    holds what each inner message of the last nested request came to (for metrics)."""

    def __init__(
        self,
        server: CmpServer,
        *,
        ra_trust: TrustStore | None = None,
        random: Callable[[int], bytes] | None = None,
    ) -> None:
        self.server = server
        self.ra_trust = ra_trust if ra_trust is not None else server.ra_trust
        cfg = server.config
        self._checks = Authenticator(
            server.backend, secrets=None, trust=self.ra_trust or TrustStore(), vendor_trust=None,
            untrusted=server.untrusted, max_iterations=cfg.max_iterations, max_rsa_bits=cfg.max_rsa_bits,
            min_nonce_bytes=cfg.min_nonce_bytes, max_time_skew=cfg.max_time_skew,
            allow_replaced_signers=cfg.allow_replaced_signers, require_message_time=cfg.require_message_time,
        )
        self._writer = ResponseWriter(server.signer, random if random is not None else RandomPool().take)
        self.inner_outcomes: list[Outcome] = []

    # -- the CmpServer surface the service uses ----------------------------------------------

    def handle(self, data: bytes, now: float, *, defer: float = 0.0, inject_error: bool = False) -> Reply:
        """Answer one request: a nested one here, any other by the wrapped server."""
        self.inner_outcomes = []
        if not is_nested(data):
            return self.server.handle(data, now, defer=defer, inject_error=inject_error)
        try:
            msg = decode_request(data)
        except (DerError, MessageError, ValueError, IndexError, RecursionError):
            return self.server.handle(data, now)  # its decoder's answer: badDataFormat
        try:
            inner = self._open(msg, now)
        except (Refuse, NestedError) as exc:
            return self._error(msg, now, exc.fail, exc.text)
        except Rejected as exc:
            return self._error(msg, now, exc.fail, str(exc))
        replies = [
            self.server.handle(data_i, now, defer=defer, inject_error=inject_error)
            for data_i in inner.values()
        ]
        self.inner_outcomes = [r.outcome for r in replies]
        out, _ = self._writer.write(msg.header, NO_AUTH, now, BodyType.NESTED,
                                    NestedMessageContent(tuple(r.data for r in replies)))
        refused = sum(r.outcome.status in ("error", "rejection") for r in replies)
        return Reply(out, Outcome("nested", "nested", "accepted",
                                  text=f"{len(replies)} inner, {refused} refused"))

    def tick(self, now: float) -> list[Outcome]:
        return self.server.tick(now)

    def state_of(self, transaction_id: bytes) -> TxState | None:
        return self.server.state_of(transaction_id)

    def statistics(self) -> ServerStatistics:
        return self.server.statistics()

    @property
    def live_transactions(self) -> int:
        return self.server.live_transactions

    # -- the envelope ----------------------------------------------------------------------

    def _open(self, msg: PKIMessage, now: float) -> dict[bytes, bytes]:
        """The inner messages of an envelope from a trusted RA, or the refusal (module doc)."""
        if self.ra_trust is None or not len(self.ra_trust):
            raise Refuse(FailInfo.notAuthorized, "this CA trusts no RA: nested messages are not accepted")
        alg = msg.header.protection_alg
        if alg is not None and msg.protection is not None and is_mac_algorithm(alg):
            raise Refuse(FailInfo.notAuthorized, "a nested message must be signed by a trusted RA (not MAC-protected)")
        _auth, denial = self._checks.authenticate(msg, now, {})
        if denial is not None:
            raise Refuse(denial.fail, f"RA {denial}")
        self._checks.check_header(msg.header, now, first=False)  # the envelope starts no transaction of its own
        return index(msg)

    def _error(self, msg: PKIMessage, now: float, fail: FailInfo | int, text: str) -> Reply:
        mask = fail.mask if isinstance(fail, FailInfo) else int(fail)
        body = ErrorMsgContent(PKIStatusInfo(PKIStatus.REJECTION, (text[:200],), mask))
        data, _ = self._writer.write(msg.header, NO_AUTH, now, BodyType.ERROR, body)
        return Reply(data, Outcome("nested", "error", "error", mask, text=text[:200]))
