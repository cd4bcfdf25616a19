"""The embedded CA's X.509 side, in one place to import it from.

The work is done in modules with one job each:

- ``fleet.ca.hierarchy``: the root CA, issuing CA and CMP signer, their files and locks;
- ``fleet.ca.issuance``: the issuance policy (``CertificateIssuer``) and its records;
- ``fleet.ca.tbs``: the certificate encoder beside its reference, cryptography's builder;
- ``fleet.ca.rfc4514``: a Name's RFC 4514 text read straight from its DER;
- ``fleet.keytypes``: the key-type grammar the hierarchy is created with.

This module re-exports their public names for the rest of fleet and for operators' scripts.
"""

from __future__ import annotations

from fleet.ca.hierarchy import (
    CA_VALIDITY,
    ID_KP_CMC_RA,
    CaHierarchy,
    HierarchyError,
    HierarchyFiles,
    signature_hash_for,
)
from fleet.ca.issuance import (
    CertificateIssuer,
    CertificateRequestRejected,
    IssuedCert,
    key_fingerprint,
)
from fleet.ca.tbs import public_key_bits

__all__ = [
    "CA_VALIDITY",
    "ID_KP_CMC_RA",
    "CaHierarchy",
    "CertificateIssuer",
    "CertificateRequestRejected",
    "HierarchyError",
    "HierarchyFiles",
    "IssuedCert",
    "key_fingerprint",
    "public_key_bits",
    "signature_hash_for",
]
