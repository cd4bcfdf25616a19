"""``fleet keys``: generate device key pools ahead of a run and list what is cached."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from fleet.bounds import COUNT
from fleet.cli.usage import bounded, examples
from fleet.keys import ALLOWED_SPECS, KeyPoolStore, KeySpec, ProgressLine

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Pre-generate device key pairs and cache them on disk (RSA keygen is slow).",
    short_help="Pre-generate device key pools (RSA keygen is slow).",
    epilog=examples("fleet keys generate --type rsa:2048 --count 1000", "fleet keys list"),
)

_DIR_HELP = (
    "Key pool directory (default: $FLEET_KEYS_DIR, else $XDG_CACHE_HOME/fleet/keys, "
    "else ~/.cache/fleet/keys)."
)
DirOption = Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP, show_default=False)]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@app.command(short_help="Add COUNT keys of one type to its cached pool.", epilog=examples(
    "fleet keys generate --type rsa:2048 --count 1000",
    "fleet keys generate --type ec:P-256 --count 500 --dir ./keys --workers 2",
))
def generate(
    key_type: Annotated[
        str,
        typer.Option(
            "--type", "-t", help=f"Key type, one of: {', '.join(ALLOWED_SPECS)}."
        ),
    ],
    count: Annotated[
        int, typer.Option("--count", "-n", callback=bounded(COUNT), help="How many keys to add to the pool.")
    ],
    directory: DirOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            callback=bounded(COUNT),
            help="Worker processes (default: one per CPU core).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Generate COUNT more keys of one type and append them to its cached pool."""
    spec = KeySpec.parse(key_type)
    store = KeyPoolStore(directory)
    progress = ProgressLine(count, sys.stderr)
    started = time.monotonic()
    try:
        added = store.generate(spec, count, workers=workers, progress=progress)
    except KeyboardInterrupt:
        # Exit here rather than re-raise: in typer's non-standalone mode a KeyboardInterrupt
        # becomes a returned 130 that the entry point would turn into exit status 0.
        progress.finish()
        typer.echo(
            f"fleet: interrupted; kept finished keys: {store.path_for(spec)} holds "
            f"{store.count(spec)} {spec} keys",
            err=True,
        )
        raise SystemExit(130) from None
    progress.finish()
    elapsed = time.monotonic() - started
    typer.echo(
        f"generated {added} {spec} keys in {_duration(elapsed)} "
        f"({added / max(elapsed, 1e-9):,.1f} keys/s); "
        f"{store.path_for(spec)} now holds {store.count(spec)} keys"
    )


@app.command("list", epilog=examples("fleet keys list", "fleet keys list --dir ./keys"))
def list_pools(directory: DirOption = None) -> None:
    """Show the cached key pools: type, key count, file size and path."""
    store = KeyPoolStore(directory)
    infos = store.list()
    if not infos:
        typer.echo(f"no key pools in {store.directory}")
        return
    rows = [("TYPE", "COUNT", "SIZE", "PATH")]
    for info in infos:
        path = str(info.path) + (f"  (damaged: {info.problem})" if info.problem else "")
        rows.append((info.spec, str(info.count), _size(info.bytes), path))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for t, c, s, p in rows:
        typer.echo(f"{t:<{widths[0]}}  {c:>{widths[1]}}  {s:>{widths[2]}}  {p}")
