"""genm items beyond RFC 9483 §4.3's: RFC 9810 §5.3.19 key pair types, preferred symmetric
algorithm and language tags, and the check of what a request's infoValue may hold.

What a genm carries is checked before it is answered (``check_request``), in the form RFC 9810
§5.3.19 and RFC 9483 §4.3 give each type:

* caProtEncCert, signKeyPairTypes, encKeyPairTypes, preferredSymmAlg, currentCRL, caCerts and
  certReqTemplate are asked for with the infoValue absent; a value is refused with badRequest;
* suppLangTags carries at least one language tag (SEQUENCE OF UTF8String); none is badRequest,
  and so is a list none of whose tags the CA supports ("If none of the offered tags are
  supported, an error MUST be returned", RFC 9810 §5.3.19.13). The genp answers exactly one.

A value that is no DER of the type is badDataFormat (the engine's answer to a ``DerError``).
"""

from __future__ import annotations

from fleet.cmp import der, oids
from fleet.cmp.backend import Rejected
from fleet.cmp.messages import FailInfo, InfoTypeAndValue

__all__ = [
    "ENC_KEY_PAIR_TYPES",
    "PREFERRED_SYMM_ALG",
    "SUPPORTED_LANGUAGES",
    "check_request",
    "language_tags_response",
]

X25519 = "1.3.101.110"
X448 = "1.3.101.111"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
_P256 = "1.2.840.10045.3.1.7"
_P384 = "1.3.132.0.34"

# encKeyPairTypes: keys that cannot sign which this CA certifies, their possession proven by
# the indirect method (``fleet.cmp.pop``): key agreement (X25519, X448, ECDH on P-256/P-384) and
# key transport (RSA).
ENC_KEY_PAIR_TYPES = der.sequence(
    der.algorithm_identifier(X25519),
    der.algorithm_identifier(X448),
    der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid(_P256)),
    der.algorithm_identifier(oids.EC_PUBLIC_KEY, der.oid(_P384)),
    der.algorithm_identifier(oids.RSA_ENCRYPTION, der.NULL_DER),
)
# preferredSymmAlg: the content encryption of the EnvelopedData this CA writes.
PREFERRED_SYMM_ALG = der.algorithm_identifier(AES256_CBC)
SUPPORTED_LANGUAGES = ("en",)

# Types asked for with no infoValue (RFC 9810 §5.3.19, RFC 9483 §4.3).
_ABSENT = frozenset({
    oids.IT_CA_PROT_ENC_CERT, oids.IT_SIGN_KEY_PAIR_TYPES, oids.IT_ENC_KEY_PAIR_TYPES,
    oids.IT_PREFERRED_SYMM_ALG, oids.IT_CURRENT_CRL, oids.IT_CA_CERTS, oids.IT_CERT_REQ_TEMPLATE,
})


def check_request(item: InfoTypeAndValue) -> None:
    """Refuse a genm item whose infoValue is not of the form its type asks for (module doc)."""
    if item.oid in _ABSENT and item.value is not None:
        raise Rejected(f"{item.name} is asked for without an infoValue", FailInfo.badRequest)
    if item.oid == oids.IT_SUPP_LANG_TAGS and item.value is None:
        raise Rejected("suppLangTags needs at least one language tag", FailInfo.badRequest)


def language_tags_response(item: InfoTypeAndValue) -> InfoTypeAndValue:
    """The one supported tag of those a suppLangTags genm offers, in the client's order."""
    assert item.value is not None
    offered = [
        node.expect(der.UTF8_STRING, "language tag").as_text()
        for node in der.parse(item.value).expect(der.SEQUENCE, "suppLangTags").children()
    ]
    if not offered:
        raise Rejected("suppLangTags needs at least one language tag", FailInfo.badRequest)
    for tag in offered:
        if tag.split("-", 1)[0].lower() in SUPPORTED_LANGUAGES:
            return InfoTypeAndValue(oids.IT_SUPP_LANG_TAGS, der.sequence(der.utf8_string(tag)))
    raise Rejected(f"none of the language tags {', '.join(offered)[:80]} is supported "
                   f"(supported: {', '.join(SUPPORTED_LANGUAGES)})", FailInfo.badRequest)
