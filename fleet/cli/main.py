"""The ``fleet`` command line: one typer app, each command group in its own module."""

from __future__ import annotations

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


def _register() -> None:
    """Attach the command groups; each module owns one group and knows nothing of the others."""
    from fleet.cli import ca_cmd, cmp_cmd, keys_cmd

    app.add_typer(cmp_cmd.app, name="cmp")
    app.add_typer(ca_cmd.app, name="ca")
    app.add_typer(keys_cmd.app, name="keys")


def main() -> None:
    """Entry point: run the app, turning every ``FleetError`` into one line and exit status 1."""
    _register()
    try:
        app(standalone_mode=False)
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # typer/click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("fleet: aborted", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
