"""The complete programs among the docs' code samples run, as written: the README's,
docs/subprocess.rst's, docs/trees.rst's and the asyncio, anyio and trio ones of docs/hosts.rst. (Other pages
show fragments: a ``ctx`` from the text around them.)"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: page -> which of its python blocks are complete programs (None: all of them)
RUNNABLE: dict[str, list[int] | None] = {"subprocess.rst": None, "hosts.rst": [0, 1, 2], "trees.rst": None}


def samples() -> list[tuple[str, str]]:
    out = []
    for name, which in RUNNABLE.items():
        blocks = re.findall(r"\.\. code-block:: python\n\n((?:[ ]{3,}.*\n|\n)+)", (DOCS / name).read_text())
        wanted = range(len(blocks)) if which is None else which
        out += [(f"{name}#{i}", textwrap.dedent(blocks[i])) for i in wanted]
    readme = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    return out + [(f"README.md#{i}", b) for i, b in enumerate(readme)]


def test_the_pages_have_samples() -> None:
    names = {name.split("#")[0] for name, _ in samples()}
    assert names == {*RUNNABLE, "README.md"}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sample", samples(), ids=[name for name, _ in samples()])
def test_sample_runs(sample: tuple[str, str]) -> None:
    """In a fresh interpreter (the samples start event loops and children)."""
    name, code = sample
    argv = [sys.executable, "-c", code]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=80, check=False)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"
