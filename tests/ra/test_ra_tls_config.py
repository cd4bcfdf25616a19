"""``RaConfig``'s TLS settings are checked when it is made: each problem names its option."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.ra.config import RaConfig, RaConfigError

BASE = {"cert": Path("ra.pem"), "key": Path("ra.key"), "secret": b"x"}


@pytest.mark.parametrize(("upstream", "settings", "key", "words"), [
    ("http://ca:80/", {"upstream_tls_trusted": Path("ca.pem")}, "upstream_tls_trusted", "is for an https:// upstream"),
    ("https://ca/", {"upstream_tls_cert": Path("c.pem")}, "upstream_tls_key", "go together"),
    ("https://ca/", {"upstream_tls_key_pass": b"pw"}, "upstream_tls_key_pass", "needs --upstream-tls-key"),
    ("https://ca/", {"tls_client_ca": Path("ca.pem")}, "tls_client_ca", "needs --tls-cert and --tls-key"),
])
def test_tls_settings_that_cannot_work_name_the_option(upstream: str, settings: dict[str, object], key: str,
                                                       words: str) -> None:
    with pytest.raises(RaConfigError) as info:
        RaConfig(upstream, **BASE, **settings)  # type: ignore[arg-type]
    assert info.value.key == key and words in info.value.problem


def test_the_upstream_tls_client_carries_the_ras_credential_without_showing_its_passphrase() -> None:
    config = RaConfig("https://ca/", **BASE, upstream_tls_trusted=Path("ca.pem"),  # type: ignore[arg-type]
                      upstream_tls_cert=Path("c.pem"), upstream_tls_key=Path("c.key"), upstream_tls_key_pass=b"pw")
    tls = config.upstream_tls()
    assert tls is not None and (tls.trusted, tls.cert, tls.key, tls.key_pass) == (
        Path("ca.pem"), Path("c.pem"), Path("c.key"), b"pw")
    assert "pw" not in repr(config) + repr(tls)
    assert RaConfig("https://ca/", **BASE).upstream_tls() is None  # type: ignore[arg-type]
