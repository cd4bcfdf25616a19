"""Every reason the CMP server refuses a request, and the one failInfo bit it answers with.

One table (``Refusal``), so that a refusal says the same bit wherever it is raised and a client
or a conformance suite can rely on it. Each member's value is (failInfo bit, the reason). The bits
follow RFC 9810 §5.2.3's definitions and RFC 9483 §3.5 (generic validation) and §3.6.4:

* the message cannot be read, a mandatory field is missing or has the wrong syntax:
  badDataFormat ("the data submitted has the wrong format");
* the protection does not verify, or the header does not name the key that made it:
  badMessageCheck ("integrity check failed");
* an algorithm, curve, key type or size the server does not take: badAlg;
* the signer does not chain to a trust anchor, or the records do not know it: signerNotTrusted;
* a header or body field that is well formed but not allowed where it is: badRequest
  ("transaction not permitted or supported");
* messageTime missing or too far off: badTime; nonces: badSenderNonce and badRecipientNonce;
* pvno other than 2 or 3: unsupportedVersion; a transactionID already used: transactionIdInUse;
* a follow-up protected differently from its transaction's first message: wrongIntegrity
  ("not sufficient integrity protection"); by another requester: notAuthorized;
* what the request asks: badPOP, badCertTemplate, badCertId (no certificate matches what it
  names), certRevoked, notAuthorized;
* the server cannot answer now: systemUnavail; a fault of its own: systemFailure.

A rejection never goes out without a failInfo bit: every member names one
(tests/cmp/test_refusals.py holds the server to the table with requests pyasn1 builds).
"""

from __future__ import annotations

import enum

from fleet.cmp.messages import FailInfo

__all__ = ["Refusal"]

F = FailInfo


class Refusal(enum.Enum):
    """A reason for refusing a request; ``fail`` is its failInfo bit."""

    # -- the message as a whole (RFC 9483 §3.5, RFC 9811) --------------------------------
    NOT_DER = (F.badDataFormat, "the request is not a DER-encoded PKIMessage")
    NO_TRANSACTION_ID = (F.badDataFormat, "the header lacks a transactionID")
    BAD_VERSION = (F.unsupportedVersion, "pvno is neither 2 nor 3")

    # -- header fields (RFC 9483 §3.1) ----------------------------------------------------
    BAD_SENDER_NONCE = (F.badSenderNonce, "senderNonce missing or shorter than 128 bits")
    RECIP_NONCE_IN_FIRST = (F.badRecipientNonce, "the first message of a transaction carries a recipNonce")
    WRONG_RECIP_NONCE = (F.badRecipientNonce, "recipNonce does not echo the server's senderNonce")
    NO_MESSAGE_TIME = (F.badTime, "messageTime is missing")
    MESSAGE_TIME_OFF = (F.badTime, "messageTime is too far from the server's time")
    IMPLICIT_CONFIRM_VALUE = (F.badRequest, "implicitConfirm's value is not NULL")
    CONFIRM_WAIT_TIME_VALUE = (F.badDataFormat, "confirmWaitTime's value is not a GeneralizedTime")
    IMPLICIT_AND_WAIT = (F.badRequest, "implicitConfirm and confirmWaitTime together")

    # -- protection (RFC 9483 §3.2, §3.3, §3.5) ------------------------------------------
    UNPROTECTED = (F.badMessageCheck, "protection or protectionAlg is missing")
    UNKNOWN_ALGORITHM = (F.badAlg, "protection or signature algorithm not supported")
    MALFORMED_MAC_PARAMS = (F.badMessageCheck, "MAC parameters cannot be read")
    NO_SECRET = (F.badMessageCheck, "no shared secret for the senderKID")
    MAC_MISMATCH = (F.badMessageCheck, "the MAC does not verify")
    SENDER_NOT_DIRECTORY_NAME = (F.badMessageCheck, "sender of a MAC-protected message is not a directoryName")
    SIGNATURE_INVALID = (F.badMessageCheck, "the signature does not verify")
    SIGNER_NOT_NAMED = (F.badMessageCheck, "sender or senderKID does not name the signer certificate")
    SIGNER_NOT_FIRST = (F.badMessageCheck, "the signer certificate is not the first of extraCerts")
    UNUSABLE_SIGNER = (F.badMessageCheck, "the signer certificate cannot be used")
    UNSUPPORTED_KEY = (F.badAlg, "key type, curve or size not supported")
    UNTRUSTED_SIGNER = (F.signerNotTrusted, "no path from the signer to a trust anchor")
    SIGNER_REVOKED = (F.certRevoked, "the signer certificate is revoked, on hold or was rejected")
    SIGNER_PENDING = (F.notAuthorized, "the signer certificate is not confirmed yet")
    SIGNER_REPLACED = (F.notAuthorized, "the signer certificate was replaced by a key update")
    SIGNER_UNKNOWN = (F.signerNotTrusted, "the signer certificate is not in the CA's records")

    # -- transactions (RFC 9810 §5.1.1, RFC 9483 §3.5) -----------------------------------
    TRANSACTION_ID_IN_USE = (F.transactionIdInUse, "the transactionID was used before")
    TRANSACTION_EXPIRED = (F.systemUnavail, "the transaction was closed by a timeout")
    OUT_OF_SEQUENCE = (F.badRequest, "the message does not fit the transaction's state")
    OTHER_PROTECTION = (F.wrongIntegrity, "a follow-up protected otherwise than the first message")
    OTHER_REQUESTER = (F.notAuthorized, "a follow-up from another requester")
    BUSY = (F.systemUnavail, "too many concurrent transactions")
    INTERNAL = (F.systemFailure, "a fault inside the server")

    # -- ir/cr/kur/p10cr (RFC 9483 §4.1) --------------------------------------------------
    CERT_REQ_COUNT = (F.badRequest, "not exactly one CertReqMsg")
    CERT_REQ_ID = (F.badRequest, "certReqId is not 0")
    NOT_SIGNED = (F.notAuthorized, "the request must be signature-protected")
    TEMPLATE = (F.badCertTemplate, "the certTemplate cannot be certified")
    POP = (F.badPOP, "proof of possession missing or invalid")
    POP_ALGORITHM = (F.badAlg, "the POP's signature algorithm is not supported")
    CSR_MALFORMED = (F.badDataFormat, "the PKCS#10 request cannot be read")
    UPDATE_UNKNOWN = (F.badCertId, "the certificate to update was not issued by this CA")
    UPDATE_REVOKED = (F.certRevoked, "the certificate to update is revoked")
    UPDATE_NOT_AUTHORIZED = (F.notAuthorized, "the kur is not signed with the certificate to update")
    UPDATE_NOT_CONFIRMED = (F.notAuthorized, "the certificate to update is not confirmed yet")
    UPDATE_REPLACED = (F.notAuthorized, "the certificate to update was already updated")
    OLD_CERT_ID = (F.badCertId, "oldCertID does not name a certificate by a directoryName issuer")
    OLD_CERT_ID_MALFORMED = (F.badDataFormat, "oldCertID cannot be read")

    # -- rr (RFC 9483 §4.2) ------------------------------------------------------------------
    REV_DETAILS_COUNT = (F.badRequest, "not exactly one RevDetails")
    REV_FIELDS_MISSING = (F.addInfoNotAvailable, "RevDetails lacks issuer or serialNumber")
    REV_NOT_SIGNED = (F.wrongIntegrity, "the rr is not signature-protected")
    REV_REASON_UNKNOWN = (F.badDataFormat, "the CRLReason value is not a revocation reason")
    REV_CERT_ID = (F.badCertId, "RevDetails does not name a certificate of this CA")
    REV_MALFORMED = (F.badDataFormat, "RevDetails cannot be read")
    REV_REASON = (F.badRequest, "crlEntryDetails does not hold exactly one CRLReason")
    REV_NOT_AUTHORIZED = (F.notAuthorized, "the rr is not signed by the certificate's holder")
    ALREADY_REVOKED = (F.certRevoked, "the certificate is already revoked")
    NOT_ON_HOLD = (F.badRequest, "removeFromCRL for a certificate not on hold")

    # -- genm, certConf, pollReq --------------------------------------------------------------
    GENM_MALFORMED = (F.badDataFormat, "a genm value cannot be read")
    CERT_STATUS_COUNT = (F.badRequest, "certConf holds more than one CertStatus")
    CERT_STATUS_ID = (F.badRequest, "certConf names another certReqId")
    CERT_HASH = (F.badCertId, "certHash does not match the certificate issued")
    CERT_HASH_ALGORITHM = (F.badAlg, "certConf's hashAlg is not supported")
    POLL_ID = (F.badRequest, "pollReq names another certReqId")

    @property
    def fail(self) -> FailInfo:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]
