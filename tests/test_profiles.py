"""Profiles: every shipped profile loads, and each kind of mistake is one line naming the key."""

from pathlib import Path

import pytest

from fleet.load.schedule import Constant, Ramp
from fleet.profiles import ProfileError, load_profile, parse_profile

PROFILES = sorted((Path(__file__).parent.parent / "profiles").glob("*.toml"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profiles_load(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name
    assert profile.duration > 0
    assert profile.flow


def test_defaults_and_values() -> None:
    p = parse_profile(
        {"run": {"duration": 3, "flow": ["genm", "ir", "kur"]}, "arrivals": {"shape": "ramp", "start_rate": 1, "end_rate": 9}},
        where="t.toml",
    )
    assert isinstance(p.shape, Ramp)
    assert p.flow == ("genm", "ir", "kur")
    assert p.devices.auth == "mac"
    assert p.duration == 3.0


def test_overrides_ignore_none() -> None:
    p = parse_profile({"arrivals": {"shape": "constant", "rate": 5}}, where="t.toml")
    q = p.with_overrides(duration=7.0, workers=None)
    assert q.duration == 7.0 and q.workers == p.workers
    assert isinstance(q.shape, Constant)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"rn": {}}, "unknown key 'rn'"),
        ({"run": {"duraton": 5}}, "[run]: unknown key 'duraton'"),
        ({"run": {"duration": -1}}, "[run].duration: must be a number > 0"),
        ({"run": {"flow": ["ir", "renew"]}}, "[run].flow: must be a list of"),
        ({"run": {"flow": ["kur"]}}, "kur needs a certificate"),
        ({"run": {"workers": 0}}, "[run].workers: must be an integer >= 1"),
        ({"arrivals": {"shape": "square"}}, "unknown arrival shape 'square'"),
        ({"arrivals": {"shape": "constant"}}, "[arrivals]"),
        ({"devices": {"key_types": "rsa:1024"}}, "[devices].key_types"),
        ({"devices": {"auth": "token"}}, "[devices].auth: must be one of mac, vendor"),
        ({"slo": {"p99_seconds": {"xr": 1}}}, "unknown operation 'xr'"),
        ({"slo": {"max_error_rate": 5}}, "[slo].max_error_rate: must be a fraction"),
        ({"ca": {"mode": "5g"}}, "[ca].mode: must be one of lcmpp, 3gpp"),
    ],
)
def test_mistakes_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, where="bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml")
    assert fragment in message
    assert "\n" not in message


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nduration = 5\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)
