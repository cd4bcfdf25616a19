"""Certificate life-cycle rules of the server role that span messages or transactions.

What a single request may ask is checked where it is handled (``fleet.cmp.server``,
``fleet.cmp.server_auth``); the rules here need memory of other messages:

* one key update at a time per certificate (RFC 9483 §4.1.3): while the kup of one kur awaits
  its certConf, a second kur for the same certificate is refused with badRequest ("transaction
  not permitted or supported", RFC 9810 §5.2.3). The certificate is still good meanwhile; the
  refusal goes when the first update is confirmed (the old certificate is then replaced),
  rejected or expires;
* a follow-up (certConf, pollReq, error) brings a senderNonce of its own, never one of the
  transaction's earlier messages (RFC 9810 §5.1.1: "fresh" nonces): badSenderNonce;
* a certConf CertStatus saying "accepted" carries no failInfo (RFC 9810 §5.3.18 and §5.2.3: a
  failInfo goes with a rejection): badRequest.

The choice of failInfo for a request about a certificate that is not confirmed yet
(notAuthorized: a kur or rr may not act on it before its holder accepted it) is shared with the
signer checks in ``server_auth``.
"""

from __future__ import annotations

from fleet.cmp.backend import Rejected
from fleet.cmp.messages import FailInfo, PKIStatus, PKIStatusInfo
from fleet.cmp.server_auth import Refuse

__all__ = ["OpenUpdates", "check_cert_status", "fresh_nonce"]


class OpenUpdates:
    """Certificates with a key update in progress: serial of the certificate being updated ->
    transactionID of its kur."""

    __slots__ = ("_by_serial", "_new")

    def __init__(self) -> None:
        self._by_serial: dict[int, bytes] = {}
        self._new: dict[int, int] = {}  # serial of the kup's certificate -> serial it updates

    def check(self, serial: int) -> None:
        """Refuse a kur for ``serial`` while another kur for it awaits confirmation."""
        if serial in self._by_serial:
            raise Rejected("a key update of this certificate is already in progress", FailInfo.badRequest)

    def begin(self, serial: int, new_serial: int, transaction_id: bytes) -> None:
        self._by_serial[serial] = transaction_id
        self._new[new_serial] = serial

    def end(self, serial: int | None, new_serial: int | None, transaction_id: bytes) -> None:
        """The kur of ``transaction_id`` is settled (confirmed, rejected, expired)."""
        if serial is not None and self._by_serial.get(serial) == transaction_id:
            del self._by_serial[serial]
            self._new.pop(new_serial or 0, None)

    def check_revocation(self, serial: int) -> None:
        """Refuse an rr for the certificate of a kup not confirmed yet: its holder settles it by
        certConf (accept or reject), not by revocation (notAuthorized)."""
        if serial in self._new:
            raise Rejected("certificate of a key update not confirmed yet cannot be revoked; "
                           "reject it in the certConf", FailInfo.notAuthorized)

    def __len__(self) -> int:
        return len(self._by_serial)


def fresh_nonce(seen: tuple[bytes, ...], nonce: bytes | None) -> tuple[bytes, ...]:
    """``seen`` with ``nonce`` added; a nonce the transaction already used is refused."""
    if nonce is None or nonce in seen:
        raise Refuse(FailInfo.badSenderNonce, "senderNonce was already used in this transaction")
    return (*seen, nonce)


def check_cert_status(info: PKIStatusInfo | None) -> bool:
    """Whether a certConf CertStatus accepts the certificate; an acceptance carrying a failInfo
    is refused."""
    if info is None:
        return True
    accepted = info.status in (PKIStatus.ACCEPTED, PKIStatus.GRANTED_WITH_MODS)
    if accepted and info.fail_info:
        raise Refuse(FailInfo.badRequest, "certConf status accepted must not carry a failInfo")
    return accepted
