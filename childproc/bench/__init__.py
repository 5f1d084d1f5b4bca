"""Benchmarks: ``python -m childproc bench NAME`` or ``python benchmarks/NAME.py``.

Each prints a readable table (with a progress bar on stderr for long runs) and
writes JSON under ``benchmarks/results/``. Pairs run interleaved in one
process and are reported as ratios, because the machines are noisy. Run them
in a fresh venv: an interpreter that imports many modules at start-up pays
their at-fork hooks on every ``os.fork()``.

* ``throughput`` - spawn-and-reap rate vs the raw floor and the peers
* ``scaling``    - CPU per reaped child with K children alive
* ``latency``    - child exit to callback, p50/p99, idle / busy / blocked main thread
* ``bigparent``  - one child from 12 MiB .. 4 GiB parents: os.fork, posix_spawn, fork server
* ``forkfaults`` - page faults per fork in a fork server and its child, against a bare one
"""

NAMES = ("throughput", "scaling", "latency", "bigparent", "forkfaults")
