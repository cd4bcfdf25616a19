"""The on-disk key pool store and the in-memory pool, with real keys and files (key types:
tests/test_keytypes.py)."""

from __future__ import annotations

import os
import stat
import threading
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleet.keys import (
    KeyPool,
    KeyPoolError,
    KeyPoolExhausted,
    KeyPoolStatistics,
    KeyPoolStore,
    KeySpec,
    default_directory,
    ensure,
)

EC = KeySpec.parse("ec:P-256")
ED = KeySpec.parse("ed25519")
RSA = KeySpec.parse("rsa:2048")


def der_of(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def take_all_der(pool: KeyPool) -> list[bytes]:
    return [der_of(pool.take()) for _ in range(len(pool))]


@pytest.fixture
def store(tmp_path: Path) -> KeyPoolStore:
    return KeyPoolStore(tmp_path / "keys")


# ---------------------------------------------------------------------------------- KeyPool


def make_pool(spec: KeySpec, n: int, **kwargs: object) -> tuple[KeyPool, list[bytes]]:
    ders = [spec.generate_der() for _ in range(n)]
    return KeyPool(spec, ders, **kwargs), ders  # type: ignore[arg-type]


def test_pool_hands_out_keys_in_order_then_errors() -> None:
    pool, ders = make_pool(EC, 3)
    assert pool.statistics() == KeyPoolStatistics("ec:P-256", 3, 0, 3, 0, 0)
    assert [der_of(pool.take()) for _ in range(3)] == ders
    assert pool.statistics() == KeyPoolStatistics("ec:P-256", 3, 3, 0, 0, 0)
    with pytest.raises(KeyPoolExhausted, match="exhausted after 3 keys"):
        pool.take()
    assert pool.statistics().taken == 3


def test_pool_reuse_cycles_and_counts() -> None:
    pool, ders = make_pool(ED, 2, on_exhausted="reuse")
    got = [der_of(pool.take()) for _ in range(5)]
    assert got == [ders[0], ders[1], ders[0], ders[1], ders[0]]
    assert pool.statistics() == KeyPoolStatistics("ed25519", 2, 5, 0, 3, 0)


def test_pool_generate_makes_fresh_cheap_keys() -> None:
    pool, ders = make_pool(EC, 2, on_exhausted="generate")
    got = [der_of(pool.take()) for _ in range(4)]
    assert got[:2] == ders
    assert len(set(got)) == 4
    for der in got[2:]:
        assert KeySpec.of(serialization.load_der_private_key(der, None)) == EC  # type: ignore[arg-type]
    assert pool.statistics() == KeyPoolStatistics("ec:P-256", 2, 4, 0, 0, 2)


def test_pool_generate_policy_refuses_rsa_and_unknown_policies() -> None:
    with pytest.raises(KeyPoolError, match="cheap key type"):
        KeyPool(RSA, [], on_exhausted="generate")
    with pytest.raises(KeyPoolError, match="unknown on_exhausted"):
        KeyPool(EC, [], on_exhausted="recycle")  # type: ignore[arg-type]


def test_empty_pool_with_reuse_is_exhausted() -> None:
    pool = KeyPool(EC, [], on_exhausted="reuse")
    with pytest.raises(KeyPoolExhausted):
        pool.take()


def test_repr_shows_only_spec_and_counts() -> None:
    pool, ders = make_pool(EC, 2, on_exhausted="reuse")
    pool.take()
    text = repr(pool)
    assert text == (
        "<KeyPool ec:P-256 size=2 taken=1 remaining=1 reused=0 generated=0 on_exhausted='reuse'>"
    )
    for der in ders:
        assert der.hex()[:16] not in text


def test_pool_memory_per_key_is_about_the_der_size() -> None:
    ders = [EC.generate_der() for _ in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pool = KeyPool(EC, ders)
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(pool)
    finally:
        tracemalloc.stop()
    # 138 B of DER, 4 B length prefix, 8 B offset; a list of bytes objects would be ~180 B.
    assert per_key < 160, per_key


# ---------------------------------------------------------------------------------- store


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_KEYS_DIR", str(tmp_path / "override"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_directory() == tmp_path / "override"
    assert KeyPoolStore().directory == tmp_path / "override"
    monkeypatch.delenv("FLEET_KEYS_DIR")
    assert default_directory() == tmp_path / "xdg" / "fleet" / "keys"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_directory() == tmp_path / "home" / ".cache" / "fleet" / "keys"


def test_round_trip_through_store(store: KeyPoolStore) -> None:
    ders = [EC.generate_der() for _ in range(10)]
    assert store.append(EC, ders) == 10
    pool = store.load(EC)
    assert len(pool) == 10
    assert take_all_der(pool) == ders
    assert store.count(EC) == 10
    assert store.path_for(EC).name == "ec-P-256.keys"


def test_generate_rsa_in_two_workers(store: KeyPoolStore) -> None:
    seen: list[int] = []
    added = store.generate(RSA, 40, workers=2, in_process=False, progress=seen.append)
    assert added == 40
    assert seen == sorted(seen) and seen[-1] == 40 and len(seen) > 1
    pool = store.load(RSA)
    moduli = set()
    for _ in range(40):
        key = pool.take()
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == 2048 and key.public_key().public_numbers().e == 65537
        moduli.add(key.public_key().public_numbers().n)
    assert len(moduli) == 40


@pytest.mark.parametrize("text", ["ec:P-384", "ed25519"])
def test_generate_cheap_types_in_workers(store: KeyPoolStore, text: str) -> None:
    spec = KeySpec.parse(text)
    assert store.generate(spec, 30, workers=2, in_process=False) == 30
    keys = [store.load(spec).take() for _ in range(1)]
    assert KeySpec.of(keys[0]) == spec
    assert len(set(take_all_der(store.load(spec)))) == 30


def test_generate_cheap_in_process(store: KeyPoolStore) -> None:
    seen: list[int] = []
    assert store.generate(EC, 500, progress=seen.append) == 500
    assert seen[-1] == 500
    pool = store.load(EC)
    assert len(pool) == 500
    assert all(isinstance(pool.take(), ec.EllipticCurvePrivateKey) for _ in range(500))


def test_appending_keeps_old_keys_in_order(store: KeyPoolStore) -> None:
    store.generate(ED, 5)
    first = take_all_der(store.load(ED))
    old_file = store.path_for(ED).read_bytes()
    store.generate(ED, 7)
    after = take_all_der(store.load(ED))
    assert len(after) == 12
    assert after[:5] == first
    assert len(set(after)) == 12
    # The old records are copied byte for byte: they are a prefix of the new record section.
    new_file = store.path_for(ED).read_bytes()
    old_records = b"".join(len(d).to_bytes(4, "big") + d for d in first)
    assert old_records in old_file
    assert new_file.index(old_records) == len(new_file) - sum(4 + len(d) for d in after)


def test_concurrent_appends_lose_nothing(store: KeyPoolStore) -> None:
    batches = [[ED.generate_der() for _ in range(25)] for _ in range(4)]
    threads = [threading.Thread(target=store.append, args=(ED, b)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    got = take_all_der(store.load(ED))
    assert sorted(got) == sorted(d for b in batches for d in b)
    for batch in batches:  # each append lands as one contiguous run
        start = got.index(batch[0])
        assert got[start : start + 25] == batch


def test_load_slices_and_counts(store: KeyPoolStore) -> None:
    ders = [EC.generate_der() for _ in range(10)]
    store.append(EC, ders)
    assert take_all_der(store.load(EC, 4)) == ders[:4]
    assert take_all_der(store.load(EC, 3, start=4)) == ders[4:7]
    assert take_all_der(store.load(EC, start=7)) == ders[7:]
    pool = store.load(EC, 2, start=8, on_exhausted="reuse")
    assert [der_of(pool.take()) for _ in range(3)] == [ders[8], ders[9], ders[8]]
    with pytest.raises(KeyPoolError, match=r"holds 10 keys, 11 needed.*--count 1"):
        store.load(EC, 11)
    with pytest.raises(KeyPoolError, match="no ed25519 key pool"):
        store.load(ED)


def test_ensure_generates_only_what_is_missing(store: KeyPoolStore) -> None:
    pool = ensure(store, ED, 20)
    assert len(pool) == 20 and store.count(ED) == 20
    inode = store.path_for(ED).stat().st_ino
    again = ensure(store, ED, 15, on_exhausted="reuse")
    assert len(again) == 15 and again.on_exhausted == "reuse"
    assert store.path_for(ED).stat().st_ino == inode  # nothing rewritten
    bigger = ensure(store, ED, 30)
    assert len(bigger) == 30 and store.count(ED) == 30


def test_interrupted_generation_keeps_finished_keys(store: KeyPoolStore) -> None:
    class Stop(Exception):
        pass

    def stop(done: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        store.generate(RSA, 40, workers=2, in_process=False, progress=stop)
    kept = store.count(RSA)
    assert 5 <= kept < 40 and kept % 5 == 0  # chunks of 5 keys; running chunks are kept too
    assert len(store.load(RSA)) == kept
    with pytest.raises(Stop):
        store.generate(RSA, 20, in_process=True, progress=stop)
    assert store.count(RSA) == kept + 7  # in-process progress comes every ~0.25 s of work


def test_file_and_directory_modes(store: KeyPoolStore) -> None:
    old_umask = os.umask(0)
    try:
        store.generate(EC, 3)
        store.generate(EC, 3)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    for path in store.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sorted(p.name for p in store.directory.iterdir()) == [".ec-P-256.lock", "ec-P-256.keys"]


def test_list(store: KeyPoolStore) -> None:
    assert store.list() == []
    store.generate(EC, 4)
    store.generate(ED, 2)
    infos = store.list()
    assert [(i.spec, i.count, i.problem) for i in infos] == [
        ("ec:P-256", 4, None),
        ("ed25519", 2, None),
    ]
    assert infos[0].path == store.path_for(EC)
    assert infos[0].bytes == store.path_for(EC).stat().st_size


# ---------------------------------------------------------------------------------- damage


def _damaged(store: KeyPoolStore, how: str) -> Path:
    store.generate(EC, 5)
    path = store.path_for(EC)
    data = bytearray(path.read_bytes())
    if how == "flip-record":
        data[-20] ^= 0x01
    elif how == "flip-header-count":
        data[8 + 2 + len("ec:P-256") + 7] ^= 0x01
    elif how == "flip-digest":
        data[8 + 2 + len("ec:P-256") + 16] ^= 0x80
    elif how == "truncate":
        del data[-10:]
    elif how == "truncate-header":
        del data[12:]
    elif how == "extra":
        data += b"\x00"
    elif how == "magic":
        data[0:8] = b"NOTAPOOL"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("how", "expect"),
    [
        ("flip-record", "corrupt"),
        ("flip-digest", "corrupt"),
        ("flip-header-count", "damaged|truncated|corrupt"),
        ("truncate", "truncated"),
        ("truncate-header", "truncated"),
        ("extra", "extra bytes"),
        ("magic", "not a fleet key pool"),
    ],
)
def test_damage_is_detected_on_load_and_append(
    store: KeyPoolStore, how: str, expect: str
) -> None:
    path = _damaged(store, how)
    before = path.read_bytes()
    with pytest.raises(KeyPoolError, match=expect) as info:
        store.load(EC)
    assert str(path) in str(info.value)
    with pytest.raises(KeyPoolError, match=expect):
        store.generate(EC, 2)
    assert path.read_bytes() == before  # a damaged pool is never overwritten


def test_list_flags_a_truncated_file(store: KeyPoolStore) -> None:
    _damaged(store, "truncate")
    (info,) = store.list()
    assert info.spec == "ec:P-256" and info.problem is not None and "does not match" in info.problem


def test_wrong_type_in_file_is_detected(store: KeyPoolStore) -> None:
    store.generate(ED, 2)
    store.path_for(ED).rename(store.path_for(EC))
    with pytest.raises(KeyPoolError, match="holds 'ed25519' keys, expected ec:P-256"):
        store.load(EC)


def test_generate_argument_checks(store: KeyPoolStore) -> None:
    assert store.generate(EC, 0) == 0
    assert not store.directory.exists()
    with pytest.raises(KeyPoolError):
        store.generate(EC, -1)
    with pytest.raises(KeyPoolError):
        store.generate(EC, 1, workers=0)
    with pytest.raises(KeyPoolError):
        store.load(EC, -1)


def test_pool_refuses_keys_of_another_type() -> None:
    pool = KeyPool(EC, [ED.generate_der()])
    with pytest.raises(KeyPoolError, match="key 0 of a ec:P-256 pool is a ed25519 key"):
        pool.take()


# -- progress of long generations (fleet run fills RSA pools before starting) --------------------


def test_short_generation_is_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    KeyPoolStore(tmp_path).generate(EC, 2)
    assert capsys.readouterr().err == ""


def test_fleet_runs_key_filling_shows_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The orchestrator's pool filling (what `fleet run` does before the run) prints a progress
    line on stderr once a job is long; here "long" is lowered so a few RSA keys qualify."""
    import io

    from fleet import keys
    from fleet.load.orchestrator import prepare_keys
    from fleet.load.profiles import parse_profile

    monkeypatch.setattr(keys, "PROGRESS_AFTER_SECONDS", 0.0)
    profile = parse_profile(
        {"run": {"duration": 1}, "arrivals": {"shape": "constant", "rate": 1},
         "devices": {"key_types": "rsa:2048"}}, where="t.toml",
    )
    notes = io.StringIO()
    needs = prepare_keys(profile, tmp_path, notes)
    err = capsys.readouterr().err
    total = needs["rsa:2048"]
    assert f"{total}/{total} rsa:2048 keys" in err and "keys/s" in err
    assert "generating" in notes.getvalue()
    assert KeyPoolStore(tmp_path).count(KeySpec.parse("rsa:2048")) == total
