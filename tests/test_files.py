"""fleet.files.load_private_key reads keys as openssl does: a passphrase given for a key stored in
the clear is ignored (openssl pkey -passin accepts it too), an encrypted key without one or with
the wrong one is one line naming the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet.files import CredentialError, load_private_key


def _openssl_key(path: Path, *extra: str) -> Path:
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(path), *extra], check=True, capture_output=True)
    return path


@pytest.mark.parametrize("form", ["PEM", "DER"])
def test_a_passphrase_for_a_clear_key_is_accepted_as_openssl_does(tmp_path: Path, form: str) -> None:
    key = _openssl_key(tmp_path / "clear.key", "-outform", form)
    subprocess.run(["openssl", "pkey", "-in", str(key), "-inform", form, "-passin", "pass:unused", "-noout"],
                   check=True, capture_output=True)  # the reference behaviour
    assert load_private_key(key, b"unused").public_key() == load_private_key(key).public_key()


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = _openssl_key(tmp_path / "locked.key", "-aes-256-cbc", "-pass", "pass:secret-pw")
    assert load_private_key(key, b"secret-pw") is not None
    with pytest.raises(CredentialError, match="is encrypted: give its passphrase"):
        load_private_key(key)
    with pytest.raises(CredentialError, match="passphrase is wrong") as wrong:
        load_private_key(key, b"nope")
    assert "secret-pw" not in str(wrong.value)
