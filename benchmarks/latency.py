"""Run ``childproc.bench.latency`` (also: ``python -m childproc bench latency``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from childproc.bench.latency import main

if __name__ == "__main__":
    sys.exit(main())
