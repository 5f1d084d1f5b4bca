"""``python -m childproc COMMAND``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m childproc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="spawn children under each mode and show what happened")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run  # noqa: PLC0415 - only the command run is imported

        return run()
    parser.error(f"unknown command {args.command}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
