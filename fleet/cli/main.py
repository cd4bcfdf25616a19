"""The ``fleet`` command line: one typer app, each command group in its own module."""

from __future__ import annotations

import importlib
import sys

import typer

from fleet.errors import FleetError

app = typer.Typer(
    name="fleet",
    help="Play a population of CMP devices against a certificate authority.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_registered = False


def _register() -> None:
    """Attach the command groups (once); each module owns one group and knows nothing of the others."""
    global _registered
    if _registered:
        return
    _registered = True
    from fleet.cli import ca_cmd, cmp_cmd, keys_cmd, provision_cmd, report_cmd, run_cmd

    app.command("run", help="Run a load profile against a CA (the embedded one by default).")(run_cmd.run)
    app.command("report", help="Render a fleet run --report JSON as a self-contained HTML page.")(report_cmd.report)
    app.add_typer(cmp_cmd.app, name="cmp")
    app.add_typer(ca_cmd.app, name="ca")
    app.add_typer(keys_cmd.app, name="keys")
    app.command(
        "provision", help="Provision a batch of real devices from a manifest; rerun to resume."
    )(provision_cmd.provision)


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
    _register()
    click_error, click_abort = _click_exceptions()
    try:
        rv = app(standalone_mode=False)
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        sys.exit(130)
    except click_error as exc:  # usage errors: one line, click's exit code (2)
        message = exc.format_message()  # type: ignore[attr-defined]
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
