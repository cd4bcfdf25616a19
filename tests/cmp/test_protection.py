"""fleet.cmp.protection: the precomputed-pad HMAC against the standard library's."""

import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp.protection import hmac_digest


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["sha1", "sha224", "sha256", "sha384", "sha512"]),
    key=st.binary(max_size=200),
    data=st.binary(max_size=2000),
)
def test_hmac_from_precomputed_pads_is_hmac(name: str, key: bytes, data: bytes) -> None:
    assert hmac_digest(key, data, name) == hmac.digest(key, data, name)
    assert hmac_digest(key, data, name) == hmac.digest(key, data, name)  # the cached pads are unchanged
