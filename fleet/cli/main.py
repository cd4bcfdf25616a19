"""The ``fleet`` command line: one typer app, each command group in its own module."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
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


_registered = False


def _register() -> None:
    """Attach the command groups (once); each module owns one group and knows nothing of the others."""
    global _registered
    if _registered:
        return
    _registered = True
    from fleet.cli import (
        ca_cmd,
        capacity_cmd,
        cmp_cmd,
        doctor_cmd,
        k8s_cmd,
        keys_cmd,
        listen_cmd,
        provision_cmd,
        ra_cmd,
        report_cmd,
        run_cmd,
    )

    app.command("run", short_help="Run a load profile against a CA (the embedded one by default).",
                epilog=run_cmd.EPILOG)(run_cmd.run)
    app.command("capacity", short_help="Find the highest rate the CA sustains under the profile's SLO.",
                epilog=capacity_cmd.EPILOG)(capacity_cmd.capacity)
    app.command("report", short_help="Render a fleet run --report JSON as an HTML page, or merge shard reports.",
                epilog=report_cmd.EPILOG, context_settings=report_cmd.CONTEXT)(report_cmd.report)
    cmp_cmd.app.command("listen", short_help="Receive announcements a CA pushes; one JSON line each.",
                        epilog=listen_cmd.EPILOG)(listen_cmd.listen)
    app.add_typer(cmp_cmd.app, name="cmp")
    app.add_typer(ca_cmd.app, name="ca")
    app.add_typer(ra_cmd.app, name="ra")
    app.add_typer(keys_cmd.app, name="keys")
    app.add_typer(k8s_cmd.app, name="k8s")
    app.command("provision", short_help="Provision devices from a manifest; rerun to resume.",
                epilog=provision_cmd.EPILOG)(provision_cmd.provision)
    app.command("doctor", short_help="Check a CA and this machine before a run; say what to fix.",
                epilog=doctor_cmd.EPILOG)(doctor_cmd.doctor)


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
