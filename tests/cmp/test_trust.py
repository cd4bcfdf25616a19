"""fleet.cmp.trust: paths from a signer to the anchors, at a given time, cached honestly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cmp.trust import TrustStore, UntrustedSigner

from .ca_stub import Credentials, issue, make_ca, make_cert


def sub_ca(root: Credentials) -> Credentials:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Sub CA")])
    return Credentials(key, make_cert(name, key.public_key(), root, key, ca=True), (root.cert,))


def test_verify_returns_the_whole_path_from_the_cache_too() -> None:
    root = make_ca()
    sub = sub_ca(root)
    leaf = issue(sub, "RA")
    store = TrustStore([root.cert])
    first = store.verify(leaf.cert, [sub.cert])
    assert first == [leaf.cert, sub.cert, root.cert]
    first.clear()  # the caller's list: the cache keeps its own
    assert store.verify(leaf.cert, [sub.cert]) == [leaf.cert, sub.cert, root.cert]


def test_a_cached_path_holds_only_while_all_of_it_is_valid() -> None:
    root = make_ca()
    leaf = issue(root, "RA", days=10)
    store = TrustStore([root.cert])
    now = leaf.cert.not_valid_before_utc + timedelta(days=1)
    assert store.verify(leaf.cert, at=now) == [leaf.cert, root.cert]
    validity = (leaf.cert.not_valid_before_utc, leaf.cert.not_valid_after_utc)
    for outside in (validity[0] - timedelta(seconds=1), validity[1] + timedelta(seconds=1)):
        with pytest.raises(UntrustedSigner, match="not valid now"):
            store.verify(leaf.cert, at=outside)
    assert store.verify(leaf.cert, at=leaf.cert.not_valid_after_utc) == [leaf.cert, root.cert]
