"""The code samples of the README and docs/subprocess.rst run, as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "subprocess.rst"
README = ROOT / "README.md"


def samples() -> list[str]:
    text = PAGE.read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    rst = ["\n".join(line[4:] for line in block.splitlines()) for block in blocks]
    return rst + re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_page_has_samples() -> None:
    assert samples()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", range(len(samples())))
def test_sample_runs(index: int) -> None:
    exec(compile(samples()[index], f"sample #{index}", "exec"), {})  # (the docs' own code)
