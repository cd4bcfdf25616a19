"""fleet.cmp.trust: paths from a signer to the anchors, at a given time, cached honestly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
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


def test_a_verified_intermediate_is_kept_for_the_next_leaf_while_it_is_valid() -> None:
    """The second leaf under an intermediate stops at it (its path to the root was verified),
    whatever else that leaf's message carries; not once the intermediate has expired, and never
    for a leaf the intermediate did not sign."""
    root = make_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Sub CA")])
    sub = Credentials(key, make_cert(name, key.public_key(), root, key, ca=True, days=5), (root.cert,))
    first, second = issue(sub, "dev-1", days=30), issue(sub, "dev-2", days=30)
    store = TrustStore([root.cert])
    now = sub.cert.not_valid_before_utc + timedelta(days=1)
    assert store.verify(first.cert, [first.cert, sub.cert], at=now) == [first.cert, sub.cert, root.cert]
    assert store.verify(second.cert, [second.cert, sub.cert], at=now) == [second.cert, sub.cert, root.cert]
    later = sub.cert.not_valid_after_utc + timedelta(days=1)
    third = issue(sub, "dev-3", days=30)
    with pytest.raises(UntrustedSigner, match="does not chain"):
        store.verify(third.cert, [sub.cert], at=later)
    other = sub_ca(root)  # same name, another key: its leaves do not chain through the kept one
    stranger = issue(other, "dev-4")
    with pytest.raises(UntrustedSigner, match="does not chain"):
        store.verify(stranger.cert, [sub.cert], at=now)


def test_a_certificate_the_ca_just_issued_needs_no_second_check_while_valid() -> None:
    """remember_issued: the CA's own certificate, presented back by its holder, takes the path the
    CA gave it (even without the intermediate in the message), only while all of it is valid, and
    only when that path ends at one of the anchors."""
    root = make_ca()
    sub = sub_ca(root)
    mine, other = issue(sub, "dev-1", days=10), issue(sub, "dev-2", days=10)
    store = TrustStore([root.cert])
    store.remember_issued(mine.cert.public_bytes(serialization.Encoding.DER), (sub.cert, root.cert))
    store.remember_issued(other.cert.public_bytes(serialization.Encoding.DER), (sub.cert,))  # no anchor: ignored
    store.remember_issued(other.cert.public_bytes(serialization.Encoding.DER), ())  # no path: ignored
    now = mine.cert.not_valid_before_utc + timedelta(days=1)
    assert store.verify(mine.cert, [mine.cert], at=now) == [mine.cert, sub.cert, root.cert]
    with pytest.raises(UntrustedSigner, match="does not chain"):
        store.verify(other.cert, [other.cert], at=now)
    later = mine.cert.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(UntrustedSigner, match="not valid now"):
        store.verify(mine.cert, [mine.cert, sub.cert], at=later)
