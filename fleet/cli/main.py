"""The ``fleet`` command line: one typer app, each command group in its own module."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated

import typer

from fleet.cli.usage import examples
from fleet.errors import FleetError

# rich_markup_mode=None everywhere: plain click help wraps at the terminal width instead of
# cutting option names with "…", and never turns text like uniform:A:B into emoji.
app = typer.Typer(
    name="fleet",
    help="Play a population of CMP devices against a certificate authority.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (README: shell completion)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    epilog=examples(
        "fleet run profiles/smoke.toml",
        "fleet ca serve --dir ca-state --port 8080 --master-secret pass:demo",
        "fleet cmp ir --help",
    ),
)


def _version() -> str:
    try:
        return importlib.metadata.version("fleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        print(f"fleet {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print fleet's version and exit.",
                                          callback=_show_version, is_eager=True)] = False,
) -> None:
    """Play a population of CMP devices against a certificate authority."""


_registered: set[str] = set()


def _register(only: str | None = None) -> None:
    """Attach the command groups (each once): only ``only``'s when the command line names one,
    so a command starts without importing the others, else all (help, completion, a typo).
    Each module owns one group and knows nothing of the others."""
    for name, attach in _COMMANDS.items():
        if (only is None or name == only) and name not in _registered:
            _registered.add(name)
            attach()


def _run() -> None:
    from fleet.cli import run_cmd

    app.command("run", short_help="Run a load profile against a CA (the embedded one by default).",
                epilog=run_cmd.EPILOG)(run_cmd.run)


def _capacity() -> None:
    from fleet.cli import capacity_cmd

    app.command("capacity", short_help="Find the highest rate the CA sustains under the profile's SLO.",
                epilog=capacity_cmd.EPILOG)(capacity_cmd.capacity)


def _report() -> None:
    from fleet.cli import report_cmd

    app.command("report", short_help="Render a fleet run --report JSON as an HTML page, or merge shard reports.",
                epilog=report_cmd.EPILOG, context_settings=report_cmd.CONTEXT)(report_cmd.report)


def _cmp() -> None:
    from fleet.cli import cmp_cmd, listen_cmd

    cmp_cmd.app.command("listen", short_help="Receive announcements a CA pushes; one JSON line each.",
                        epilog=listen_cmd.EPILOG)(listen_cmd.listen)
    app.add_typer(cmp_cmd.app, name="cmp")


def _group(name: str, module: str) -> Callable[[], None]:
    def attach() -> None:
        app.add_typer(importlib.import_module(f"fleet.cli.{module}").app, name=name)

    return attach


def _provision() -> None:
    from fleet.cli import provision_cmd

    app.command("provision", short_help="Provision devices from a manifest; rerun to resume.",
                epilog=provision_cmd.EPILOG)(provision_cmd.provision)


def _doctor() -> None:
    from fleet.cli import doctor_cmd

    app.command("doctor", short_help="Check a CA and this machine before a run; say what to fix.",
                epilog=doctor_cmd.EPILOG)(doctor_cmd.doctor)


# In the order the help lists them.
_COMMANDS: dict[str, Callable[[], None]] = {
    "run": _run, "capacity": _capacity, "report": _report, "cmp": _cmp, "ca": _group("ca", "ca_cmd"),
    "ra": _group("ra", "ra_cmd"), "keys": _group("keys", "keys_cmd"), "k8s": _group("k8s", "k8s_cmd"),
    "provision": _provision, "doctor": _doctor,
}


def _named_command(args: Sequence[str]) -> str | None:
    """The command the arguments name (``fleet ca serve ...``: ca), or None: ``--help``, shell
    completion, no command, or one that does not exist (its error lists them all)."""
    if os.environ.get("_FLEET_COMPLETE"):
        return None
    first = next((a for a in args if not a.startswith("-")), None)
    return first if first in _COMMANDS else None


def _click_exceptions() -> tuple[type[Exception], type[BaseException]]:
    """typer >= 0.29 vendors its own click; older typer uses the click package.

    Which module holds them is known only at run time, hence import_module rather than two
    imports of one name that mypy (seeing whichever typer is installed) cannot reconcile."""
    try:
        exceptions = importlib.import_module("typer._click.exceptions")
    except ImportError:
        exceptions = importlib.import_module("click.exceptions")
    abort: type[BaseException] = getattr(exceptions, "Abort", getattr(typer, "Abort", KeyboardInterrupt))
    return exceptions.ClickException, abort


def main() -> None:
    """Entry point: run the app, turning every ``FleetError`` into one line and exit status 1."""
    _register(_named_command(sys.argv[1:]))
    click_error, click_abort = _click_exceptions()
    try:
        rv = app(standalone_mode=False, prog_name="fleet")
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        sys.exit(130)
    except click_error as exc:  # usage errors: one line, click's exit code (2)
        message = exc.format_message()  # type: ignore[attr-defined]
        if type(exc).__name__ == "NoArgsIsHelpError":  # `fleet`, `fleet cmp`: the help, as click shows it
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"fleet: usage error: {message}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except click_abort:
        print("fleet: interrupted", file=sys.stderr)
        sys.exit(130)
    if isinstance(rv, int) and rv:
        sys.exit(rv)


if __name__ == "__main__":
    main()
