"""fleet.cmp.shared_secrets: the per-device secret both sides derive, its cheaper form for many
devices, and the CA's look-up; and the load generator gets them without the CA engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp.shared_secrets import DeviceSecrets, SharedSecrets, derive_device_secret

ROOT = Path(__file__).resolve().parents[2]


def test_derived_secret_is_the_documented_hmac() -> None:
    # lower-case hex of HMAC-SHA256(master, reference), as ASCII: what `openssl cmp -secret pass:` takes
    import hashlib
    import hmac

    expected = hmac.new(b"master", b"device-000042", hashlib.sha256).hexdigest().encode("ascii")
    assert derive_device_secret(b"master", b"device-000042") == expected
    assert len(expected) == 64


@settings(max_examples=300, deadline=None)
@given(
    master=st.binary(max_size=200),  # empty, shorter than a SHA-256 block, longer (hashed first)
    references=st.lists(st.binary(max_size=80), min_size=1, max_size=5),
)
def test_device_secrets_are_derive_device_secret(master: bytes, references: list[bytes]) -> None:
    secrets = DeviceSecrets(master)
    assert secrets._pads is not None  # the pad states are what is under test
    for reference in references:
        assert secrets(reference) == derive_device_secret(master, reference)


def test_device_secrets_fall_back_to_the_reference_when_the_probe_disagrees() -> None:
    secrets = DeviceSecrets(b"master")
    secrets._pads = None  # as when the probe disagreed
    assert secrets(b"dev-00000001") == derive_device_secret(b"master", b"dev-00000001")


def test_the_master_never_shows() -> None:
    assert "s3cret" not in repr(DeviceSecrets(b"s3cret"))
    assert "s3cret" not in repr(SharedSecrets({b"ref": b"s3cret"}, default=b"s3cret", master=b"s3cret"))


def test_shared_secrets_look_up_table_then_master_then_default() -> None:
    table = {b"known": b"from-table"}
    with_master = SharedSecrets(table, default=b"fallback", master=b"master")
    assert with_master(b"known") == b"from-table"
    assert with_master(b"dev-00000007") == derive_device_secret(b"master", b"dev-00000007")
    assert with_master(None) == b"fallback"  # no senderKID: nothing to derive from
    without = SharedSecrets(table, default=b"fallback")
    assert without(b"dev-00000007") == b"fallback" and without(b"known") == b"from-table"
    assert SharedSecrets()(b"anything") is None


_LOAD_WITHOUT_THE_ENGINE = """
import sys
import fleet.load.device
engine = sorted(m for m in sys.modules if m in ("fleet.cmp.server", "fleet.cmp.server_auth", "fleet.ca.authority"))
assert not engine, engine
print("ok")
"""


def test_the_load_generator_does_not_import_the_ca_engine() -> None:
    """A device derives its secret from ``fleet.cmp.shared_secrets``; the CMP server role stays
    out of a load worker."""
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_THE_ENGINE],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
