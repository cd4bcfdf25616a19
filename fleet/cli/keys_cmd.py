"""``fleet keys``: generate device key pools ahead of a run and list what is cached."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, TextIO

import typer

from fleet.keys import ALLOWED_SPECS, KeyPoolError, KeyPoolStore, KeySpec

app = typer.Typer(
    no_args_is_help=True,
    help="Pre-generate device key pairs and cache them on disk (RSA keygen is slow).",
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


class _Progress:
    """The stderr progress line: done/total, keys/s, ETA. Redrawn in place on a terminal,
    otherwise printed as a new line at most every few seconds (for CI logs)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_print = 0.0
        self.drawn = False

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        interval = 0.2 if self.tty else 5.0
        if done < self.total and now - self.last_print < interval:
            return
        self.last_print = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = _duration((self.total - done) / rate) if rate > 0 else "?"
        width = len(str(self.total))
        line = f"{done:>{width}}/{self.total} keys  {rate:,.1f} keys/s  ETA {eta}"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


@app.command()
def generate(
    key_type: Annotated[
        str,
        typer.Option(
            "--type", "-t", help=f"Key type, one of: {', '.join(ALLOWED_SPECS)}."
        ),
    ],
    count: Annotated[
        int, typer.Option("--count", "-n", help="How many keys to add to the pool.")
    ],
    directory: DirOption = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            help="Worker processes (default: one per CPU core).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Generate COUNT more keys of one type and append them to its cached pool."""
    # Checked here rather than with typer's min=: a FleetError prints as one line from main().
    if count < 1:
        raise KeyPoolError(f"--count must be at least 1, not {count}")
    if workers is not None and workers < 1:
        raise KeyPoolError(f"--workers must be at least 1, not {workers}")
    spec = KeySpec.parse(key_type)
    store = KeyPoolStore(directory)
    progress = _Progress(count, sys.stderr)
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


@app.command("list")
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
