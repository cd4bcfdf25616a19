"""The embedded CA of ``fleet run``: started as ``python -m fleet.ca`` from the profile's [ca]
settings (a CaConfig on stdin), not by turning profile keys into ``fleet ca serve`` flags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleet.load.embedded_ca import EmbeddedCa, EmbeddedCaError
from fleet.load.profiles import parse_profile


def test_the_profiles_settings_reach_the_ca(tmp_path: Path) -> None:
    profile = parse_profile(
        {
            "ca": {
                "mode": "3gpp",
                "latency": "fixed:0.001",
                "error_fraction": 0.25,
                "waiting_fraction": 0.5,
                "check_after": 0.2,
                "seed": 5,
            }
        },
        where="p.toml",
    )
    ca = EmbeddedCa(tmp_path / "ca", config=profile.ca)
    assert ca.command() == [sys.executable, "-m", "fleet.ca"]
    with ca:
        pid = ca._proc.pid if ca._proc else 0
        for name in ("cmdline", "environ"):  # the master secret travels on stdin only
            assert ca.master_secret not in Path(f"/proc/{pid}/{name}").read_bytes()
        assert ca.root_path.exists()
        log = (ca.state_dir / "ca.log").read_text()
    assert "mode: 3gpp" in log
    assert "load knobs: latency fixed:0.001, waiting 0.5 (checkAfter 0.2 s), error 0.25" in log
    assert "per-device secrets" in log
    assert ca._proc is None and not Path(f"/proc/{pid}").exists()  # stopped and reaped


def test_a_temporary_state_folder_goes_with_the_ca() -> None:
    with EmbeddedCa() as ca:
        state = ca.state_dir
        assert (state / "root-ca.pem").exists()
    assert not state.exists()


def test_a_ca_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "vendor.pem"
    empty.write_text("")
    ca = EmbeddedCa(tmp_path / "ca", vendor_trust=empty)
    with pytest.raises(EmbeddedCaError) as info:
        ca.start()
    message = str(info.value)
    assert message.startswith("embedded CA exited at start: fleet: error: ")
    assert "vendor.pem" in message and "certificate" in message and "\n" not in message
