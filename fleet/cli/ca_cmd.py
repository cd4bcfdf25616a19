"""Command group placeholder; filled in by its owning issue."""

import typer

app = typer.Typer(no_args_is_help=True)
