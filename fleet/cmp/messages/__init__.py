"""CMP messages (RFC 9810 / RFC 4210, RFC 9480, CRMF RFC 4211): records and their DER codec.

One module per role, all re-exported here:

* ``model``: the records (``PKIMessage``, ``PKIHeader``, the bodies), ``BodyType``, ``PKIStatus``,
  ``FailInfo``;
* ``encoding``: the reference encoders;
* ``decoding``: the strict reference decoders.

``decode``, ``decode_header``, ``decode_body``, ``read_header_fields`` and ``message_time_der``
here are ``fleet.cmp.fastwire``'s: the reference's answers (messages and errors alike), reached
by offsets for the usual shapes. Use them; the strict references stay in ``decoding`` and
``encoding``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.cmp import der, oids  # noqa: F401  (messages.der, messages.oids: as before the split)
from fleet.cmp.der import Tlv  # noqa: F401
from fleet.cmp.messages.decoding import (
    MAX_MESSAGE_BYTES,
    decode_cert_req_msg,
    decode_cert_template,
    decode_info,
    decode_status_info,
)
from fleet.cmp.messages.decoding import decode_body as _decode_body_general  # noqa: F401
from fleet.cmp.messages.decoding import decode_header as _decode_header_general  # noqa: F401
from fleet.cmp.messages.encoding import (
    assemble,
    encode,
    encode_body,
    encode_body_content,
    encode_cert_req_msg,
    encode_cert_request,
    encode_cert_response,
    encode_cert_template,
    encode_header,
    encode_info,
    encode_popo,
    encode_status_info,
    protected_part,
)
from fleet.cmp.messages.model import (
    ACCEPTED,
    CERT_REQUEST_BODIES,
    CERT_RESPONSE_BODIES,
    NULL_DN,
    NULL_DN_GENERAL_NAME,
    RESPONSE_FOR,
    Body,
    BodyType,
    CertConfirmContent,
    CertId,
    CertRepMessage,
    CertReqMessages,
    CertReqMsg,
    CertResponse,
    CertStatus,
    CertTemplate,
    ErrorMsgContent,
    FailInfo,
    GenMsgContent,
    InfoTypeAndValue,
    MessageError,
    NestedMessageContent,
    OpaqueBody,
    P10Request,
    PKIConfirmContent,
    PKIHeader,
    PKIMessage,
    PKIStatus,
    PKIStatusInfo,
    PollRepContent,
    PollRepEntry,
    PollReqContent,
    Popo,
    RevDetails,
    RevRepContent,
    RevReqContent,
    Validity,
    directory_name,
    fail_info_names,
    general_name_directory,
)

if TYPE_CHECKING:
    from fleet.cmp.fastwire import (
        decode,
        decode_body,
        decode_header,
        message_time_der,
        read_header_fields,
    )

__all__ = [
    "ACCEPTED",
    "CERT_REQUEST_BODIES",
    "CERT_RESPONSE_BODIES",
    "MAX_MESSAGE_BYTES",
    "NULL_DN",
    "NULL_DN_GENERAL_NAME",
    "RESPONSE_FOR",
    "Body",
    "BodyType",
    "CertConfirmContent",
    "CertId",
    "CertRepMessage",
    "CertReqMessages",
    "CertReqMsg",
    "CertResponse",
    "CertStatus",
    "CertTemplate",
    "ErrorMsgContent",
    "FailInfo",
    "GenMsgContent",
    "InfoTypeAndValue",
    "MessageError",
    "NestedMessageContent",
    "OpaqueBody",
    "P10Request",
    "PKIConfirmContent",
    "PKIHeader",
    "PKIMessage",
    "PKIStatus",
    "PKIStatusInfo",
    "PollRepContent",
    "PollRepEntry",
    "PollReqContent",
    "Popo",
    "RevDetails",
    "RevRepContent",
    "RevReqContent",
    "Validity",
    "assemble",
    "decode",
    "decode_body",
    "decode_cert_req_msg",
    "decode_cert_template",
    "decode_header",
    "decode_info",
    "decode_status_info",
    "directory_name",
    "encode",
    "encode_body",
    "encode_body_content",
    "encode_cert_req_msg",
    "encode_cert_request",
    "encode_cert_response",
    "encode_cert_template",
    "encode_header",
    "encode_info",
    "encode_popo",
    "encode_status_info",
    "fail_info_names",
    "general_name_directory",
    "message_time_der",
    "protected_part",
    "read_header_fields",
]

# Names that live in fleet.cmp.fastwire, which is built on this package's modules: bound on first
# use rather than at import. A plain import here would be a cycle (fastwire imports this
# package's modules, so importing fastwire first would find this package unfinished); bound
# lazily, either may be imported first.
_FROM_FASTWIRE = {
    "decode": "decode",
    "decode_body": "decode_body",
    "decode_header": "decode_header",
    "message_time_der": "message_time_der",
    "read_header_fields": "read_header_fields",
}


def __getattr__(name: str) -> object:
    target = _FROM_FASTWIRE.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from fleet.cmp import fastwire

    value = getattr(fastwire, target)
    globals()[name] = value
    return value

