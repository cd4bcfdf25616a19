"""CaConfig: one spelling and one check of every CA setting, for a profile's [ca] section, the JSON
of ``python -m fleet.ca`` and (tests/cli/test_ca_serve.py) ``fleet ca serve``'s flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fleet.ca.config import PROFILE_KEYS, CaConfig, CaConfigError, Latency, LoadKnobs
from fleet.cmp.server import ServerConfig
from fleet.load.profiles import ProfileError, parse_profile

# One bad value per setting a profile may give, and the words that refuse it.
BAD = {
    "mode": ("5g", "must be one of lcmpp, 3gpp, got '5g'"),
    "latency": (
        "gauss:1",
        "must be none, fixed:S, uniform:A:B, exp:MEAN or lognormal:MEDIAN:SIGMA, got 'gauss:1'",
    ),
    "waiting_fraction": (1.5, "must be a fraction between 0 and 1, got 1.5"),
    "check_after": (-1, "must be a number >= 0, got -1"),
    "error_fraction": (2, "must be a fraction between 0 and 1, got 2"),
    "http_503_fraction": (-0.5, "must be a fraction between 0 and 1, got -0.5"),
    "drop_fraction": (True, "must be a fraction between 0 and 1, got True"),
    "max_transactions": (-5, "must be an integer >= 0, got -5"),
    "issue_rate": (-1, "must be a number >= 0, got -1"),
    "implicit_confirm": ("yes", "must be true or false, got 'yes'"),
    "confirm_wait": (0, "must be a number > 0, got 0"),
    "validity_days": (0, "must be an integer >= 1, got 0"),
    "key_type": ("rsa:1024", "unknown key type 'rsa:1024'"),
    "seed": (-1, "must be an integer >= 0, got -1"),
    "require_message_time": ("no", "must be true or false, got 'no'"),
    "kga": ("on", "must be true or false, got 'on'"),
    "kga_profiles": ("iot/a", "must be comma-separated /p/<name> profile names, got 'iot/a'"),
    "kga_key_type": ("ed448", "central key generation of ed448 is not supported"),
    "kga_password_delivery": ("yes", "must be true or false, got 'yes'"),
    "kga_pwri_iterations": (0, "must be an integer >= 1, got 0"),
    "kga_rsa_pool": (-1, "must be an integer >= 0, got -1"),
    "kga_kek_cache": (-1, "must be an integer >= 0, got -1"),
}


def test_every_profile_key_has_a_refusal_here() -> None:
    assert set(BAD) == set(PROFILE_KEYS)


@pytest.mark.parametrize("key", PROFILE_KEYS)
def test_profile_and_mapping_refuse_in_the_same_words(key: str) -> None:
    value, words = BAD[key]
    with pytest.raises(CaConfigError) as direct:
        CaConfig.from_mapping({key: value})
    assert direct.value.key == key and words in direct.value.problem
    with pytest.raises(ProfileError) as profile:
        parse_profile({"ca": {key: value}}, where="bad.toml")
    assert str(profile.value) == f"bad.toml: [ca].{key}: {direct.value.problem}"


def test_profile_settings_become_the_config() -> None:
    profile = parse_profile(
        {
            "ca": {
                "mode": "3gpp",
                "latency": "uniform:0.01:0.02",
                "error_fraction": 0.25,
                "seed": 7,
                "implicit_confirm": False,
                "confirm_wait": 5,
                "max_transactions": 100,
                "key_type": "ec:secp384r1",
            }
        },
        where="t.toml",
    )
    ca = profile.ca
    assert isinstance(ca, CaConfig)
    assert (ca.mode, ca.implicit_confirm, ca.confirm_wait, ca.max_transactions) == (
        "3gpp",
        False,
        5.0,
        100,
    )
    assert isinstance(ca.confirm_wait, float)
    assert ca.key_type == "ec:P-384"  # canonical spelling
    assert ca.knobs == LoadKnobs(
        latency=Latency("uniform", 0.01, 0.02), error_fraction=0.25, seed=7
    )
    assert ca.server_config() == ServerConfig(
        mode="3gpp", confirm_wait=5.0, grant_implicit_confirm=False, max_transactions=100
    )
    assert parse_profile({}, where="t.toml").ca == CaConfig()


def test_a_profile_may_not_deploy_the_ca() -> None:
    """Ports, files and secrets are the run's business, not the profile's."""
    with pytest.raises(ProfileError, match=r"\[ca\]: unknown key 'port' \(allowed: check_after"):
        parse_profile({"ca": {"port": 8080}}, where="bad.toml")
    with pytest.raises(CaConfigError, match="master_secret: unknown setting"):
        CaConfig.from_mapping({"master_secret": "00"}, keys=PROFILE_KEYS)


def test_json_round_trip_keeps_every_setting(tmp_path: Path) -> None:
    config = CaConfig(
        state=tmp_path / "state",
        host="::1",
        port=0,
        secret=b"s\x00cret",
        ref="dev-1",
        master_secret=b"m",
        vendor_trust=tmp_path / "v.pem",
        trusted=(tmp_path / "a.pem", tmp_path / "b.pem"),
        untrusted=(tmp_path / "i.pem",),
        key_type="ed25519",
        validity_days=3,
        public_url="http://ca.example",
        mode="3gpp",
        confirm_wait=1.5,
        implicit_confirm=False,
        max_time_skew=0,
        max_iterations=5,
        max_transactions=9,
        max_body_bytes=100,
        allow_replaced_signers=True,
        allow_key_reuse=True,
        tls_cert=tmp_path / "c.pem",
        tls_key=tmp_path / "k.pem",
        knobs=LoadKnobs(Latency.parse("lognormal:0.01:0.5"), 0.1, 0.2, 0.3, 0.4, 0.5, seed=11),
        metrics_port=9200,
        metrics_host="0.0.0.0",
    )
    text = config.to_json()
    assert CaConfig.from_json(text) == config
    assert (
        '"waiting_fraction": 0.1' in text and '"latency": "lognormal:0.01:0.5"' in text
    )  # the profile's names
    assert CaConfig.from_json(CaConfig().to_json()) == CaConfig()


def test_secrets_stay_out_of_repr_and_errors() -> None:
    config = CaConfig(secret=b"hunter2", master_secret=b"master-of-all")
    assert "hunter2" not in repr(config) and "master-of-all" not in repr(config)
    with pytest.raises(CaConfigError) as info:
        CaConfig.from_mapping({"master_secret": "not hex: hunter2"})
    assert "hunter2" not in str(info.value) and info.value.key == "master_secret"
    with pytest.raises(CaConfigError) as typed:
        CaConfig(secret="hunter2")  # type: ignore[arg-type]
    assert str(typed.value) == "secret: must be bytes"


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"ref": "dev-1"}, "ref", "needs --secret"),
        ({"tls_cert": Path("c.pem")}, "tls_key", "--tls-cert and --tls-key go together"),
        (
            {"issuing_cert": Path("i.pem"), "issuing_key": Path("k.pem")},
            "signer_cert",
            "--issuing-cert, --issuing-key, --signer-cert and --signer-key go together",
        ),
        ({"port": 9200, "metrics_port": 9200}, "metrics_port", "9200 is also --port"),
        ({"port": 70000}, "port", "must be an integer from 0 to 65535, got 70000"),
        ({"trusted": ("a.pem",)}, "trusted", "must be a list of paths, got ('a.pem',)"),
    ],
)
def test_settings_that_need_each_other(changes: dict, key: str, words: str) -> None:
    with pytest.raises(CaConfigError) as info:
        CaConfig(**changes)
    assert info.value.key == key
    assert info.value.worded(lambda name: "--" + name.replace("_", "-")) == words
    assert "--" not in info.value.problem  # spelled as the setting's own name by default


def test_config_is_frozen_and_checks_replacements() -> None:
    config = CaConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "3gpp"  # type: ignore[misc]
    with pytest.raises(CaConfigError, match="mode: must be one of"):
        dataclasses.replace(config, mode="cmp2000")


@pytest.mark.parametrize("text", ["[1, 2]", "{not json", '{"latency": 5}'])
def test_bad_json_is_one_error(text: str) -> None:
    with pytest.raises(CaConfigError) as info:
        CaConfig.from_json(text)
    assert "\n" not in str(info.value)


def test_shared_secrets_follow_the_settings() -> None:
    assert CaConfig().shared_secrets() is None
    anyone = CaConfig(secret=b"s").shared_secrets()
    assert anyone is not None and anyone(b"whoever") == b"s"
    one = CaConfig(secret=b"s", ref="dev-1").shared_secrets()
    assert one is not None and one(b"dev-1") == b"s" and one(b"dev-2") is None
    master = CaConfig(master_secret=b"demo").shared_secrets()
    assert master is not None and master(b"dev-1") not in (None, b"demo")
