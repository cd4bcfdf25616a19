"""`fleet ca serve` refuses to certify a key twice unless started with --allow-key-reuse: two
`openssl cmp` irs for one key file against a real CA process on loopback, with and without it."""

from __future__ import annotations

from pathlib import Path

from .test_openssl_client import _start_ca, _stop, cmp, new_key, ok, pbm


def _two_irs(tmp_path: Path, *flags: str) -> tuple[str, int, int]:
    """The second ir's output and exit code for a key already certified by the first, and how
    many certificates the CA's records hold."""
    ca = _start_ca(tmp_path / "state", *flags)
    try:
        key = new_key(tmp_path / "device.key")
        ok(cmp(ca, "-cmd", "ir", *pbm(ca), "-newkey", key, "-subject", "/CN=first", "-certout",
               tmp_path / "first.crt", cwd=tmp_path))
        second = cmp(ca, "-cmd", "ir", *pbm(ca), "-newkey", key, "-subject", "/CN=second", "-certout",
                     tmp_path / "second.crt", cwd=tmp_path)
        assert ca.proc.poll() is None, "the CA died"
        return second.stdout + second.stderr, second.returncode, sum(
            1 for p in (tmp_path / "first.crt", tmp_path / "second.crt") if p.exists())
    finally:
        _stop(ca)


def test_key_reuse_is_refused_by_default(tmp_path: Path) -> None:
    output, code, certs = _two_irs(tmp_path)
    assert code != 0
    assert "badCertTemplate" in output and "already certified" in output
    assert certs == 1


def test_allow_key_reuse_flag(tmp_path: Path) -> None:
    output, code, certs = _two_irs(tmp_path, "--allow-key-reuse")
    assert code == 0, output
    assert certs == 2
