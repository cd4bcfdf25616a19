"""CMP (RFC 9810, RFC 9483) for both roles, without I/O: bytes in, bytes out, time as an argument.

The names a library user needs, in one place::

    from fleet.cmp import ClientConfig, ClientTransaction, CertRequest, MacProtector, Send, Done

    tx = ClientTransaction(ClientConfig(MacProtector(secret, reference=b"ref")), request)
    step = tx.start()
    while isinstance(step, Send):
        step = tx.receive(post(step.data))  # the caller's transport; Done at the end

Roles and modules: ``client`` (ClientTransaction, its state table), ``server`` (CmpServer, its
transaction table) with ``server_auth`` (its checks and response protection), ``backend`` (the
contract with the CA behind the server), ``shared_secrets`` (MAC secrets both sides derive),
``x509parts`` (request fields as cryptography objects), ``requests`` (what an end entity asks
for), ``messages`` (records and the reference codec), ``fastwire`` (the offset readers and
pre-encoded writers both roles use), ``protection`` and ``trust`` (MACs, signatures, certificate
paths), ``cms``, ``keypackage`` and ``kga`` (central key generation: the EnvelopedData, the KGA's
signed key package, both roles' part), ``der``, ``errors``.

Importing this package is cheap: each name below loads its module on first use. Nothing under
``fleet.cmp`` imports trio or opens sockets.
"""

import importlib as _importlib
import typing as _typing

__all__ = [
    "BadMac",
    "BadSignature",
    "BadVersion",
    "BodyType",
    "CaBackend",
    "CaPubsNotAllowed",
    "CertReqIdMismatch",
    "CertRequest",
    "CertificateError",
    "ClientConfig",
    "ClientTransaction",
    "CmpError",
    "CmpServer",
    "CsrRequest",
    "DerError",
    "Done",
    "Event",
    "FailInfo",
    "GeneralRequest",
    "InfoTypeAndValue",
    "IssueRequest",
    "LocalProtocolError",
    "MacProtector",
    "MalformedMessage",
    "MessageError",
    "Outcome",
    "PKIHeader",
    "PKIMessage",
    "PKIStatus",
    "PKIStatusInfo",
    "PollingLimit",
    "ProtectionError",
    "RecipNonceMismatch",
    "Rejected",
    "Reply",
    "RequestRejected",
    "RevocationRequest",
    "Send",
    "ServerConfig",
    "ServerError",
    "SignatureProtector",
    "State",
    "StatusError",
    "TransactionIdMismatch",
    "TrustStore",
    "UnexpectedBody",
    "UnprotectedMessage",
    "UnsupportedAlgorithm",
    "UntrustedSigner",
    "WrongPublicKey",
]

# name -> the module that defines it
_HOME = {
    **dict.fromkeys(
        ["ClientConfig", "ClientTransaction", "Done", "Event", "Send", "State"], "client"
    ),
    **dict.fromkeys(["CmpServer", "Outcome", "Reply", "ServerConfig"], "server"),
    **dict.fromkeys(["CaBackend", "IssueRequest", "Rejected"], "backend"),
    **dict.fromkeys(
        ["CertRequest", "CsrRequest", "GeneralRequest", "RevocationRequest"], "requests"
    ),
    **dict.fromkeys(
        ["BadMac", "BadSignature", "MacProtector", "ProtectionError", "SignatureProtector",
         "UnsupportedAlgorithm"],
        "protection",
    ),
    **dict.fromkeys(["CertificateError", "TrustStore", "UntrustedSigner"], "trust"),
    **dict.fromkeys(
        ["BadVersion", "CaPubsNotAllowed", "CertReqIdMismatch", "CmpError", "LocalProtocolError",
         "MalformedMessage", "PollingLimit", "RecipNonceMismatch", "RequestRejected", "ServerError",
         "StatusError", "TransactionIdMismatch", "UnexpectedBody", "UnprotectedMessage",
         "WrongPublicKey"],
        "errors",
    ),
    **dict.fromkeys(
        ["BodyType", "FailInfo", "InfoTypeAndValue", "MessageError", "PKIHeader", "PKIMessage",
         "PKIStatus", "PKIStatusInfo"],
        "messages.model",
    ),
    "DerError": "der",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# What static tools see; tests/cmp/test_exports.py keeps it equal to _HOME.
if _typing.TYPE_CHECKING:
    from fleet.cmp.backend import CaBackend, IssueRequest, Rejected
    from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Event, Send, State
    from fleet.cmp.der import DerError
    from fleet.cmp.errors import (
        BadVersion,
        CaPubsNotAllowed,
        CertReqIdMismatch,
        CmpError,
        LocalProtocolError,
        MalformedMessage,
        PollingLimit,
        RecipNonceMismatch,
        RequestRejected,
        ServerError,
        StatusError,
        TransactionIdMismatch,
        UnexpectedBody,
        UnprotectedMessage,
        WrongPublicKey,
    )
    from fleet.cmp.messages.model import (
        BodyType,
        FailInfo,
        InfoTypeAndValue,
        MessageError,
        PKIHeader,
        PKIMessage,
        PKIStatus,
        PKIStatusInfo,
    )
    from fleet.cmp.protection import (
        BadMac,
        BadSignature,
        MacProtector,
        ProtectionError,
        SignatureProtector,
        UnsupportedAlgorithm,
    )
    from fleet.cmp.requests import CertRequest, CsrRequest, GeneralRequest, RevocationRequest
    from fleet.cmp.server import CmpServer, Outcome, Reply, ServerConfig
    from fleet.cmp.trust import CertificateError, TrustStore, UntrustedSigner
