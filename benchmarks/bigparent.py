"""Run ``childproc.bench.bigparent`` (also: ``python -m childproc bench bigparent``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from childproc.bench.bigparent import main

if __name__ == "__main__":
    sys.exit(main())
