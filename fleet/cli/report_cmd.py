"""``fleet report RUN.json --html report.html``: the offline HTML page of a run report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.cli.usage import examples
from fleet.files import check_output_path, write_output
from fleet.report import load_report, render_html

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)

EPILOG = examples(
    "fleet run profiles/smoke.toml --report run.json",
    "fleet report run.json --html report.html",
)


def report(
    run_json: Annotated[Path, typer.Argument(metavar="RUN_JSON", help="The JSON report `fleet run --report` wrote.")],
    html: Annotated[Path, typer.Option("--html", metavar="FILE", help="Write a self-contained HTML page here.")],
) -> None:
    """Render a run report as one HTML page: verdict, throughput and latency over time, latency distribution."""
    check_output_path(html, "--html")
    write_output(html, render_html(load_report(run_json)).encode(), "--html")
    print(f"report: {html}")


app.command(epilog=EPILOG)(report)

__all__ = ["app", "report"]
