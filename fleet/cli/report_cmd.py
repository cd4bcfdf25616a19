"""``fleet report RUN.json --html report.html``: the offline HTML page of a run report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.report import load_report, write_html

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def report(
    run_json: Annotated[Path, typer.Argument(help="The JSON report `fleet run --report` wrote.")],
    html: Annotated[Path, typer.Option("--html", help="Write a self-contained HTML page here.")],
) -> None:
    """Render a run report as one HTML page: verdict, throughput and latency over time, latency distribution."""
    write_html(load_report(run_json), html)
    print(f"report: {html}")


__all__ = ["app", "report"]
