"""``fleet keys``: generate device key pools and prepared-device pools ahead of a run, list and
remove what is cached."""

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
    help="Pre-generate device key pairs (RSA keygen is slow) and prepared devices (key, CertRequest "
    "and POP made before the run) and cache them on disk.",
    short_help="Pre-generate key pools and prepared-device pools.",
    epilog=examples("fleet keys generate --type rsa:2048 --count 1000",
                    "fleet keys prepare profiles/smoke.toml --count 100000", "fleet keys list"),
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


@app.command(short_help="Prepare a profile's devices: key, CertRequest and POP.", epilog=examples(
    "fleet keys prepare profiles/smoke.toml",
    "fleet keys prepare profiles/steady.toml --count 1000000 --workers 2",
))
def prepare(
    profile: Annotated[Path, typer.Argument(help="The profile whose [devices] to prepare.", show_default=False)],
    count: Annotated[
        int | None,
        typer.Option("--count", "-n", callback=bounded(COUNT),
                     help="Devices to prepare, from index 0 (default: the profile's device count).",
                     show_default=False),
    ] = None,
    directory: DirOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", callback=bounded(COUNT), help="Worker processes (default: one per CPU core).",
                     show_default=False),
    ] = None,
) -> None:
    """Make a new prepared-device pool for a profile's [devices] (prepared = true uses it once)."""
    # the device layer (numpy ...) only for this command
    from fleet.load.prepared import Identity, flow_has_kur
    from fleet.load.prepared_store import PreparedStore
    from fleet.load.profiles import load_profile

    loaded = load_profile(profile)
    devices, kur = loaded.devices, flow_has_kur(loaded.flow)  # a flow with kur: a kur key per device too
    identity = Identity.of(devices, kur=kur)
    n = count if count is not None else devices.count
    store = PreparedStore(directory)
    progress = ProgressLine(n, sys.stderr, label="prepared devices")
    started = time.monotonic()
    try:
        path = store.prepare(devices, n, workers=workers, progress=progress, kur=kur)
    except KeyboardInterrupt:
        progress.finish()
        typer.echo("fleet: interrupted; no pool written", err=True)
        raise SystemExit(130) from None
    progress.finish()
    elapsed = time.monotonic() - started
    typer.echo(f"prepared {n} devices ({identity.describe()}) in {_duration(elapsed)} "
               f"({n / max(elapsed, 1e-9):,.0f}/s): {path}")


@app.command(short_help="Remove a prepared-device pool by name, or every used one.", epilog=examples(
    "fleet keys remove 3f2a9c1b0d4e-a1b2c3", "fleet keys remove --used",
))
def remove(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="A pool's name as `fleet keys list` shows it.",
                                               show_default=False)] = None,
    used: Annotated[bool, typer.Option("--used", help="Remove every pool a run has used.")] = False,
    directory: DirOption = None,
) -> None:
    """Remove prepared-device pools (key pools are one file per type: delete it to start over)."""
    from fleet.load.prepared_store import PreparedStore

    store = PreparedStore(directory)
    chosen = [name] if name else []
    if used:
        chosen += [i.name for i in store.list() if i.used and i.name not in chosen]
    if not chosen:
        raise typer.BadParameter("name a pool to remove, or give --used", param_hint="'NAME'")
    for pool in chosen:
        typer.echo(f"removed {store.remove(pool)}")


@app.command("list", short_help="Show the cached key pools and prepared-device pools.",
             epilog=examples("fleet keys list", "fleet keys list --dir ./keys"))
def list_pools(directory: DirOption = None) -> None:
    """Show the cached key pools (type, key count, file size, path) and prepared-device pools."""
    store = KeyPoolStore(directory)
    infos = store.list()
    if not infos:
        typer.echo(f"no key pools in {store.directory}")
    else:
        rows: list[tuple[str, ...]] = [("TYPE", "COUNT", "SIZE", "PATH")]
        for info in infos:
            path = str(info.path) + (f"  (damaged: {info.problem})" if info.problem else "")
            rows.append((info.spec, str(info.count), _size(info.bytes), path))
        _table(rows)
    from fleet.load.prepared_store import PreparedStore

    pools = PreparedStore(directory).list()
    if not pools:
        return
    typer.echo("")
    rows = [("PREPARED", "DEVICES", "USED", "SIZE", "DEVICES ARE")]
    for p in pools:
        what = p.identity.describe() if p.identity else f"(damaged: {p.problem})"
        rows.append((p.name, str(p.count), str(p.used), _size(p.bytes), what))
    _table(rows)


def _table(rows: list[tuple[str, ...]]) -> None:
    """Columns left-aligned for text, right-aligned for numbers; the last one as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.rjust(w) if cell.isdigit() or cell[:1].isdigit() and i else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        typer.echo("  ".join([*cells, row[-1]]))
