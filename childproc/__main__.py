"""``python -m childproc COMMAND``: ``demo`` (each mode on real children), ``doctor`` (this
process and machine: SIGCHLD owner, pidfds, traps). The benchmarks are not part of the
package: they live in the repository's ``benchmarks/`` (``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m childproc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="spawn children under each mode and show what happened")
    doctor = sub.add_parser("doctor", help="SIGCHLD owner, wakeup fd, pidfd support, known traps")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run  # noqa: PLC0415 - only the command run is imported

        return run()
    from ._doctor import format_report, report  # noqa: PLC0415

    data = report()
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
