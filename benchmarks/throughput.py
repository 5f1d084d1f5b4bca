"""Run ``childproc.bench.throughput`` (also: ``python -m childproc bench throughput``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from childproc.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
