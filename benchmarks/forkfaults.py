"""Run ``childproc.bench.forkfaults`` (also: ``python -m childproc bench forkfaults``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from childproc.bench.forkfaults import main

if __name__ == "__main__":
    sys.exit(main())
