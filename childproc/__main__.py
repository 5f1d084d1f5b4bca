"""``python -m childproc COMMAND``: ``demo`` (each mode on real children), ``doctor``
(``--pid PID``: a live process, read from /proc; without: a fresh interpreter on this
machine). The benchmarks are not part of the
package: they live in the repository's ``benchmarks/`` (``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m childproc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="spawn children under each mode and show what happened")
    doctor_cmd = sub.add_parser(
        "doctor",
        help="SIGCHLD's owner, children and zombies, pidfds, the traps that apply: of a live process "
        "(--pid, from /proc) or of a fresh interpreter (this machine)",
    )
    doctor_cmd.add_argument(
        "--pid", type=int, help="the process to read (from /proc alone); default: this one"
    )
    doctor_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run  # noqa: PLC0415 - only the command run is imported

        return run()
    from ._doctor import doctor  # noqa: PLC0415
    from ._errors import InvalidArgumentError  # noqa: PLC0415

    try:
        found = doctor(args.pid)
    except (ProcessLookupError, PermissionError, InvalidArgumentError) as exc:
        print(f"childproc doctor: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(found.as_dict(), indent=2) if args.json else found, flush=True)
    except BrokenPipeError:  # (the reader went away: `doctor | head`)
        # Python flushes stdout again at exit: point it at /dev/null so that it cannot fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
