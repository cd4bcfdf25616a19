"""``fleet keys``: in-process with typer's CliRunner, error paths through the real entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from fleet.cli.keys_cmd import app
from fleet.keys import KeyPoolStore, KeySpec

runner = CliRunner()


def run_fleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``main()`` wrapper: the thing that turns errors into one line."""
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "keys", *args],
        check=False, capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_generate_and_list(tmp_path: Path) -> None:
    args = ["generate", "--type", "ed25519", "--count", "50", "--dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    path = tmp_path / "ed25519.keys"
    assert "generated 50 ed25519 keys" in result.stdout
    assert f"{path} now holds 50 keys" in result.stdout
    assert "50/50 keys" in result.stderr and "keys/s" in result.stderr and "ETA" in result.stderr

    result = runner.invoke(app, ["generate", "-t", "ec:P-256", "-n", "3", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["list", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "COUNT", "SIZE", "PATH"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("ec:P-256", "3", str(tmp_path / "ec-P-256.keys")),
        ("ed25519", "50", str(path)),
    ]
    assert rows[1][3] == "KiB"


def test_generate_rsa_in_workers_appends(tmp_path: Path) -> None:
    args = ["generate", "--type", "rsa:2048", "--count", "30", "--workers", "2"]
    result = runner.invoke(app, [*args, "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "generated 30 rsa:2048 keys" in result.stdout
    store = KeyPoolStore(tmp_path)
    first = store.load(KeySpec.parse("rsa:2048"), 1).take().public_key().public_numbers()
    args = ["generate", "-t", "rsa:2048", "-n", "2", "-w", "1", "--dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "now holds 32 keys" in result.stdout
    assert store.load(KeySpec.parse("rsa:2048"), 1).take().public_key().public_numbers() == first


def test_list_empty_and_default_dir_from_environment(tmp_path: Path) -> None:
    target = tmp_path / "from-env"
    result = runner.invoke(app, ["list"], env={"FLEET_KEYS_DIR": str(target)})
    assert result.exit_code == 0
    assert result.stdout.strip() == f"no key pools in {target}"


def test_every_option_has_help() -> None:
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        assert sub.help, name
        for param in sub.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


def test_bad_type_is_one_line_error(tmp_path: Path) -> None:
    result = run_fleet("generate", "--type", "rsa:1024", "--count", "1", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        (
            "fleet: error: unknown key type 'rsa:1024'; allowed: ec:P-256, ec:P-384, ec:P-521, ed25519, "
            "ed448, rsa:2048, rsa:3072, rsa:4096, rsa:8192"
        )
    ]
    assert not (tmp_path / "rsa-1024.keys").exists()


def test_bad_count_is_one_line_error(tmp_path: Path) -> None:
    """A count below 1 is a usage error (exit 2), in the words profiles use for the same rule."""
    result = run_fleet("generate", "--type", "ec:P-256", "--count", "0", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        (
            "fleet: usage error: Invalid value for '--count' / '-n': must be an integer >= 1, got 0 "
            "(see 'fleet keys generate --help')"
        )
    ]
    assert list(tmp_path.iterdir()) == []


def test_corrupt_pool_is_one_line_error(tmp_path: Path) -> None:
    store = KeyPoolStore(tmp_path)
    spec = KeySpec.parse("ec:P-256")
    store.generate(spec, 4)
    path = store.path_for(spec)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run_fleet(
        "generate", "--type", "ec:P-256", "--count", "1", env={"FLEET_KEYS_DIR": str(tmp_path)}
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()[-1:]
    assert line.startswith("fleet: error: key pool file ")
    assert str(path) in line and "corrupt" in line
    assert "Traceback" not in result.stderr
    assert path.read_bytes() == bytes(data)


def test_ctrl_c_keeps_finished_keys(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group; workers ignore it, the parent saves what is done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "keys", "generate", "--type", "rsa:2048",
         "--count", "400", "--workers", "2", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    kept = KeyPoolStore(tmp_path).count(KeySpec.parse("rsa:2048"))
    assert 0 < kept < 400
    assert stderr.splitlines()[-1] == (
        f"fleet: interrupted; kept finished keys: {tmp_path / 'rsa-2048.keys'} holds "
        f"{kept} rsa:2048 keys"
    )
    assert len(KeyPoolStore(tmp_path).load(KeySpec.parse("rsa:2048"))) == kept


def test_usage_error_is_one_line_with_a_help_hint_and_exit_2() -> None:
    """main() finds click's exception classes in typer's vendored click or the click package."""
    result = run_fleet("generate", "--no-such-option")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("fleet: usage error: No such option: --no-such-option (see '")
    assert line.endswith(" keys generate --help')")
