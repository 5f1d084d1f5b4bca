"""Run ``childproc.bench.scaling`` (also: ``python -m childproc bench scaling``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from childproc.bench.scaling import main

if __name__ == "__main__":
    sys.exit(main())
