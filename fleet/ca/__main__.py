"""``python -m fleet.ca [CONFIG.json]``: serve a CA described by a ``CaConfig`` as JSON.

The JSON is ``CaConfig.to_json()``: the settings by their names, paths as text, secrets as hex.
It is read from the file named, or from stdin when none (or ``-``) is given; ``fleet run``
starts its embedded CA this way, the secrets on stdin. ``fleet ca serve`` is the same CA with
command-line options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleet.ca.config import CaConfig
from fleet.ca.serve import run
from fleet.errors import FleetError

USAGE = "usage: python -m fleet.ca [CONFIG.json | -]  (a CaConfig as JSON; stdin when absent)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if len(args) > 1 or (not args and sys.stdin.isatty()):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        text = (
            sys.stdin.read()
            if not args or args[0] == "-"
            else Path(args[0]).read_text(encoding="utf-8")
        )
    except OSError as exc:
        print(f"fleet: error: cannot read {args[0]}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        run(CaConfig.from_json(text))
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
