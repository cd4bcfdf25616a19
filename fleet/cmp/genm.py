"""Values of the RFC 9483 §4.3 support messages (genm/genp InfoTypeAndValue), both directions.

caCerts (17), rootCaCert (20) answered by rootCaKeyUpdate (18), certReqTemplate (19),
crlStatusList (22) answered by crls (23). Values are encoded TLVs, as in ``InfoTypeAndValue``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleet.cmp import der, oids
from fleet.cmp.der import DerError
from fleet.cmp.messages import (
    CertTemplate,
    InfoTypeAndValue,
    decode_cert_template,
    encode_cert_template,
)


def ca_certs_request() -> InfoTypeAndValue:
    return InfoTypeAndValue(oids.IT_CA_CERTS)


def root_ca_cert_request(old_root: bytes | None = None) -> InfoTypeAndValue:
    return InfoTypeAndValue(oids.IT_ROOT_CA_CERT, old_root)


def cert_req_template_request() -> InfoTypeAndValue:
    return InfoTypeAndValue(oids.IT_CERT_REQ_TEMPLATE)


def crl_status_list_request(issuer_name: bytes, this_update: datetime | None = None) -> InfoTypeAndValue:
    """Ask for the CRLs of one issuer (CRLSource ``issuer`` [1] GeneralNames)."""
    source = der.explicit(1, der.sequence(der.explicit(4, issuer_name)))
    status = der.sequence(source, der.generalized_time(this_update) if this_update else b"")
    return InfoTypeAndValue(oids.IT_CRL_STATUS_LIST, der.sequence(status))


# -- responses ----------------------------------------------------------------------------------


def ca_certs_response(certs: tuple[bytes, ...]) -> InfoTypeAndValue:
    return InfoTypeAndValue(oids.IT_CA_CERTS, der.sequence(*certs) if certs else None)


@dataclass(frozen=True, slots=True)
class RootCaKeyUpdate:
    new_with_new: bytes
    new_with_old: bytes | None = None
    old_with_new: bytes | None = None


def root_ca_key_update_response(update: RootCaKeyUpdate | None) -> InfoTypeAndValue:
    """rootCaKeyUpdate; an absent value means "no update available" (RFC 9483 §4.3.2)."""
    if update is None:
        return InfoTypeAndValue(oids.IT_ROOT_CA_KEY_UPDATE)
    value = der.sequence(
        update.new_with_new,
        der.explicit(0, update.new_with_old) if update.new_with_old else b"",
        der.explicit(1, update.old_with_new) if update.old_with_new else b"",
    )
    return InfoTypeAndValue(oids.IT_ROOT_CA_KEY_UPDATE, value)


def cert_req_template_response(template: CertTemplate | None, key_spec: bytes | None = None) -> InfoTypeAndValue:
    if template is None:
        return InfoTypeAndValue(oids.IT_CERT_REQ_TEMPLATE)
    value = der.sequence(encode_cert_template(template), key_spec or b"")
    return InfoTypeAndValue(oids.IT_CERT_REQ_TEMPLATE, value)


def crls_response(crls: tuple[bytes, ...]) -> InfoTypeAndValue:
    return InfoTypeAndValue(oids.IT_CRLS, der.sequence(*crls) if crls else None)


# -- decoding ------------------------------------------------------------------------------------


def _seq_of(value: bytes | None, what: str) -> tuple[bytes, ...]:
    if value is None:
        return ()
    return tuple(c.expect(der.SEQUENCE, what).raw for c in der.parse(value).expect(der.SEQUENCE, what).children())


def decode_ca_certs(item: InfoTypeAndValue) -> tuple[bytes, ...]:
    return _seq_of(item.value, "caCerts")


def decode_crls(item: InfoTypeAndValue) -> tuple[bytes, ...]:
    return _seq_of(item.value, "crls")


def decode_root_ca_key_update(item: InfoTypeAndValue) -> RootCaKeyUpdate | None:
    if item.value is None:
        return None
    parts = der.parse(item.value).expect(der.SEQUENCE, "RootCaKeyUpdateContent").children()
    if not parts:
        raise DerError("RootCaKeyUpdateContent lacks newWithNew")
    new_with_old = old_with_new = None
    for p in parts[1:]:
        if p.tag == 0xA0:
            new_with_old = p.unwrap().raw
        elif p.tag == 0xA1:
            old_with_new = p.unwrap().raw
    return RootCaKeyUpdate(parts[0].expect(der.SEQUENCE, "newWithNew").raw, new_with_old, old_with_new)


def decode_cert_req_template(item: InfoTypeAndValue) -> tuple[CertTemplate, bytes | None] | None:
    if item.value is None:
        return None
    parts = der.parse(item.value).expect(der.SEQUENCE, "CertReqTemplateContent").children()
    if not parts:
        raise DerError("CertReqTemplateContent lacks certTemplate")
    key_spec = parts[1].raw if len(parts) > 1 else None
    return decode_cert_template(parts[0].expect(der.SEQUENCE, "certTemplate")), key_spec


def crl_status_issuers(item: InfoTypeAndValue) -> tuple[bytes, ...]:
    """The issuer Names (encoded) a crlStatusList request asks about; dpn sources are skipped."""
    names = []
    for status in der.parse(item.value or b"\x30\x00").expect(der.SEQUENCE, "crlStatusList").children():
        parts = status.children()
        if parts and parts[0].tag == 0xA1:
            for gn in parts[0].unwrap().children():
                if gn.tag == 0xA4:
                    names.append(gn.unwrap().raw)
    return tuple(names)
