"""Every command the ``fleet`` app offers runs a command function, and a typer app a command module
keeps for itself offers only commands ``fleet`` offers too (``cli/provision_cmd.py`` once had
``@app.command("provision")`` on its metrics helper, in an app nothing mounted)."""

from __future__ import annotations

import importlib
import pkgutil

import typer

import fleet.cli
from fleet.cli import main as main_module


def _apps() -> list[typer.Typer]:
    main_module._register()
    return [main_module.app, *(g.typer_instance for g in main_module.app.registered_groups)]


def test_no_helper_is_registered_as_a_command() -> None:
    for app in _apps():
        for command in app.registered_commands:
            assert command.callback is not None
            assert not command.callback.__name__.startswith("_"), (command.name, command.callback)


def test_module_apps_offer_only_what_fleet_offers() -> None:
    offered = {c.callback for app in _apps() for c in app.registered_commands}
    for info in pkgutil.iter_modules(fleet.cli.__path__):
        module = importlib.import_module(f"fleet.cli.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, typer.Typer):
                for command in value.registered_commands:
                    assert command.callback in offered, (
                        f"fleet.cli.{info.name}.{name}: {command.callback} is no fleet command"
                    )


def test_provision_is_the_provision_function() -> None:
    from fleet.cli import provision_cmd

    main_module._register()
    [command] = [c for c in main_module.app.registered_commands if c.name == "provision"]
    assert command.callback is provision_cmd.provision
