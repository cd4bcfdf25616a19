"""``fleet report RUN.json --html report.html``: the offline HTML page of a run report;
``fleet report merge A.json B.json ... --out run.json``: the shards' (or workers') reports of
one run merged exactly, with the run's verdict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.capacity_report import is_capacity_report, render_capacity_html
from fleet.cli.usage import examples
from fleet.files import check_output_path, write_output
from fleet.load.shards import merge_reports
from fleet.report import load_report, render_html

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)

EPILOG = examples(
    "fleet run profiles/smoke.toml --report run.json",
    "fleet report run.json --html report.html",
    "fleet report merge shard-0.json shard-1.json shard-2.json \\\n    --out run.json --html report.html",
)

CONTEXT = {"allow_extra_args": True}  # the reports after the first (see ``report``)


def report(
    ctx: typer.Context,
    first: Annotated[str, typer.Argument(metavar="RUN_JSON|merge", help="The JSON report `fleet run --report` (or fleet capacity --report) wrote; or the word merge followed by the reports of one run's shards.", show_default=False)],
    html: Annotated[Path | None, typer.Option("--html", metavar="FILE", help="Write a self-contained HTML page here.")] = None,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="merge: write the merged JSON report here.")] = None,
) -> None:
    """Render a run report as one HTML page: verdict, throughput and latency over time, latency
    distribution. With merge: add up the reports of one run's shards exactly (histograms, never
    averaged percentiles), print the verdict and exit 1 when it fails."""
    # The reports after the first come as extra arguments (a variadic argument's help would show
    # its Python type).
    reports = [Path(a) for a in ([] if first == "merge" else [first]) + list(ctx.args)]
    merging = first == "merge"
    if merging:
        if not reports:
            raise typer.BadParameter("merge needs the reports to merge", ctx=ctx, param_hint="'RUN_JSON'")
        if out is None and html is None:
            raise typer.BadParameter("merge needs --out FILE (or --html FILE)", ctx=ctx, param_hint="'--out'")
    else:
        if len(reports) != 1:
            raise typer.BadParameter("one report, or merge and the reports to merge", ctx=ctx, param_hint="'RUN_JSON'")
        if html is None:
            raise typer.BadParameter("--html FILE is required", ctx=ctx, param_hint="'--html'")
        if out is not None:
            raise typer.BadParameter("--out is for merge", ctx=ctx, param_hint="'--out'")
    for path, flag in ((out, "--out"), (html, "--html")):
        if path is not None:
            check_output_path(path, flag)
    if not merging:
        assert html is not None
        capacity = is_capacity_report(reports[0])
        page = render_capacity_html(capacity) if capacity is not None else render_html(load_report(reports[0]))
        write_output(html, page.encode(), "--html")
        print(f"report: {html}")
        return
    doc, verdict = merge_reports([(path, load_report(path)) for path in reports])
    results = doc["results"]
    print(f"merged {len(reports)} reports: {results['scheduled']} arrivals scheduled, {results['started']} started, "
          f"{results['dropped']} dropped")
    if out is not None:
        write_output(out, json.dumps(doc, indent=1).encode(), "--out")
        print(f"report: {out}")
    if html is not None:
        write_output(html, render_html(doc).encode(), "--html")
        print(f"report: {html}")
    print(verdict.line(), flush=True)
    if verdict.exit_code:
        sys.exit(verdict.exit_code)


app.command(epilog=EPILOG, context_settings=CONTEXT)(report)

__all__ = ["app", "report"]
