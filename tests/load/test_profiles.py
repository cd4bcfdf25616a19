"""Profiles: every shipped profile loads, and each kind of mistake is one line naming the key."""

import re
from pathlib import Path

import pytest

from fleet.bounds import COUNT, FRACTION, PORT, POSITIVE
from fleet.load.profiles import OverrideError, ProfileError, load_profile, parse_profile
from fleet.load.schedule import Closed, Constant, Ramp, Sine, Spike, Steps

SHIPPED = Path(__file__).parents[2] / "profiles"
PROFILES = sorted(SHIPPED.glob("*.toml"))


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


# -- fleet run's overrides ----------------------------------------------------------------------



def test_rate_scales_every_shape_to_its_peak() -> None:
    nf = load_profile(SHIPPED / "nf-rotation.toml").with_flags(rate=300)
    assert nf.shape == Sine(180, 120, 30)
    ramp = load_profile(SHIPPED / "ramp-to-break.toml").with_flags(rate=300)
    assert isinstance(ramp.shape, Ramp) and (ramp.shape.start_rate, ramp.shape.end_rate) == pytest.approx((5, 300))
    storm = load_profile(SHIPPED / "rollout-storm.toml").with_flags(rate=60)
    assert storm.shape == Spike(2, 60, 10, 20)
    smoke = load_profile(SHIPPED / "smoke.toml").with_flags(rate=7)
    assert smoke.shape == Constant(7)


def test_duration_runs_steady_shapes_and_plays_scenarios_whole() -> None:
    wave = load_profile(SHIPPED / "renewal-wave.toml").with_flags(duration=12)
    assert wave.duration == 12 and wave.shape == Steps(((3, 50), (6, 800), (3, 50)))
    storm = load_profile(SHIPPED / "rollout-storm.toml").with_flags(duration=30)
    assert storm.shape == Spike(20, 600, 5, 10)
    nf = load_profile(SHIPPED / "nf-rotation.toml").with_flags(duration=10)
    assert nf.duration == 10 and nf.shape == Sine(150, 100, 30)
    both = load_profile(SHIPPED / "renewal-wave.toml").with_flags(duration=6, rate=80)
    assert both.shape == Steps(((1.5, 5), (3, 80), (1.5, 5)))


def test_devices_sets_a_closed_models_loop_count() -> None:
    p = parse_profile({"arrivals": {"shape": "closed", "devices": 2, "think_time": 0.1}}, where="t.toml")
    q = p.with_flags(devices=7)
    assert q.devices.count == 7 and isinstance(q.shape, Closed) and q.shape.devices == 7
    with pytest.raises(OverrideError, match="closed model has no arrival rate"):
        p.with_flags(rate=10)


def test_the_connection_pool_defaults_to_one_per_transaction_in_flight() -> None:
    """A pool smaller than max_in_flight queues requests in the client: a bound nobody asked for."""
    p = parse_profile({"run": {"max_in_flight": 3000}}, where="t.toml")
    assert p.max_connections is None and p.connections == 3000
    assert p.with_flags(max_in_flight=50).connections == 50
    q = parse_profile({"run": {"max_in_flight": 3000, "max_connections": 64}}, where="t.toml")
    assert q.connections == 64
    with pytest.raises(ProfileError, match=r"\[run\]\.max_connections: must be an integer >= 1, got 0"):
        parse_profile({"run": {"max_connections": 0}}, where="t.toml")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"max_in_flight": 0}, "max_in_flight: must be an integer >= 1, got 0"),
        ({"workers": -1}, "workers: must be an integer >= 1, got -1"),
        ({"duration": 0.0}, "duration: must be a number > 0, got 0"),
        ({"rate": 0.0}, "rate: must be a number > 0, got 0"),
        ({"devices": 0}, "devices: must be an integer >= 1, got 0"),
    ],
)
def test_overrides_obey_the_profiles_rules(flags: dict, message: str) -> None:
    p = load_profile(SHIPPED / "smoke.toml")
    with pytest.raises(OverrideError) as info:
        p.with_flags(**flags)
    assert str(info.value) == message


def test_bounds_words() -> None:
    assert COUNT.problem(0) == "must be an integer >= 1, got 0"
    assert COUNT.problem(True) == "must be an integer >= 1, got True"
    assert POSITIVE.problem(float("inf")) == "must be a number > 0, got inf"
    assert FRACTION.problem(1.5) == "must be a fraction between 0 and 1, got 1.5"
    assert PORT.problem(65536) == "must be an integer from 0 to 65535, got 65536"
    assert COUNT.problem(3) is None and PORT.problem(0) is None and FRACTION.problem(1) is None


@pytest.mark.parametrize(
    ("ca", "fragment"),
    [
        ({"error_fraction": 2}, "[ca].error_fraction: must be a fraction between 0 and 1, got 2"),
        ({"confirm_wait": 0}, "[ca].confirm_wait: must be a number > 0, got 0"),
        ({"latency": 5}, "[ca].latency: must be a string"),
    ],
)
def test_ca_knobs_are_checked_like_the_flags(ca: dict, fragment: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(fragment)):
        parse_profile({"ca": ca}, where="bad.toml")
