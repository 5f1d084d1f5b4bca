"""Every Python code sample in the docs and the README runs, as written. A sample that
is a fragment (it uses a ``ctx`` from the text around it) runs with the few lines of
setup and teardown listed for it here, around the sample's own text; a new sample
must either run alone or get an entry, or ``test_every_sample_is_accounted_for`` fails.
And every public name is in the API reference with its signature."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import childproc

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_CTX = "import os, childproc\nctx = childproc.Context()\n"
_CLOSE = "\nctx.close()\n"
_MYAPP = """
import os, sys, tempfile, pathlib
_pkg = pathlib.Path(tempfile.mkdtemp()) / "myapp"
_pkg.mkdir()
(_pkg / "__init__.py").write_text("")
(_pkg / "workers.py").write_text(
    "def work(server, sock, n):\\n    sock.sendall(str(n * n).encode())\\n    return 0\\n"
)
sys.path.insert(0, str(_pkg.parent))
os.environ["PYTHONPATH"] = str(_pkg.parent)
from childproc.forkserver import ForkServer
"""

#: sample -> (setup, teardown) for the fragments.
AROUND: dict[str, tuple[str, str]] = {
    "forkserver.rst#1": (_MYAPP, "\nassert child.socket.recv(100) == b'49'\nchild.wait()\nserver.stop()\n"),
    "forkserver.rst#3": (
        "import childproc\nfrom childproc.forkserver import ForkServer\n"
        "def job(server, sock):\n    return 0\n"
        "server = ForkServer.start(entries={'job': job})\n"
        "def on_event(child, event):\n    print(event)\n",
        "\nserver.stop()\n",
    ),
    "handles.rst#0": (_CTX + "def on_event(child, event):\n    print(event)\n", _CLOSE),
    "handles.rst#1": (_CTX, _CLOSE),
    "hosts.rst#3": (
        "import childproc\njobs = [['true'], ['sh', '-c', 'exit 3']]\n"
        "def on_event(child, event):\n    print(event)\n",
        "",
    ),
    "hosts.rst#4": ("import selectors, childproc\nctx = childproc.Context()\nctx.spawn(['true'])\n", _CLOSE),
    "index.rst#1": ("import childproc\n", ""),
    "modes.rst#0": ("import childproc\n", _CLOSE),
    # (it shows the SIGKILL after the grace: it did not when SIGTERM beat the trap)
    "trees.rst#0": ("", "\nassert job.returncode == -signal.SIGKILL, job.final\n"),
}


def samples() -> list[tuple[str, str]]:
    """(name, code) of every sample: ``page.rst#i`` for docs pages, ``README.md#i``."""
    out = []
    for page in sorted(DOCS.glob("*.rst")):
        blocks = re.findall(r"\.\. code-block:: python\n\n((?:[ ]{3,}.*\n|\n)+)", page.read_text())
        out += [(f"{page.name}#{i}", textwrap.dedent(block)) for i, block in enumerate(blocks)]
    readme = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    return out + [(f"README.md#{i}", block) for i, block in enumerate(readme)]


def test_every_sample_is_accounted_for() -> None:
    names = {name for name, _ in samples()}
    assert set(AROUND) <= names, f"setup for samples that are gone: {set(AROUND) - names}"
    assert len(names) >= 15  # (the docs have samples: a broken pattern finds none)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sample", samples(), ids=[name for name, _ in samples()])
def test_sample_runs(sample: tuple[str, str]) -> None:
    """In a fresh interpreter (the samples start event loops and children)."""
    name, code = sample
    setup, teardown = AROUND.get(name, ("", ""))
    argv = [sys.executable, "-W", "error::ResourceWarning", "-c", setup + code + teardown]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=80, check=False, cwd=ROOT)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.timeout(300)
def test_every_public_name_is_in_the_api_reference_with_its_signature(tmp_path: Path) -> None:
    """Built with Sphinx: each name of ``__all__`` of ``childproc``, its adapters and
    its fork server has an entry in the API reference, and each callable's entry
    (functions, and the methods of every class an application holds) shows its
    parameters."""
    sphinx = pytest.importorskip("sphinx")
    del sphinx
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (out / "api.html").read_text()
    # (the adapters import their hosts: the test extra has them all)
    modules = [childproc] + [
        importlib.import_module(f"childproc.{m}")
        for m in ("asyncio_host", "trio_host", "anyio_host", "twisted_host", "forkserver")
    ]
    # The classes whose methods an application calls, with the module that documents them.
    classes: list[tuple[str, type]] = [("childproc", childproc.Context), ("childproc", childproc.Child)]
    classes += [
        (module.__name__, getattr(module, name))
        for module in modules[1:]
        for name in module.__all__
        if isinstance(getattr(module, name), type) and not issubclass(getattr(module, name), BaseException)
    ]

    def entry(ident: str) -> str | None:
        match = re.search(rf'<dt class="sig sig-object py" id="{re.escape(ident)}">(.*?)</dt>', html, re.S)
        return None if match is None else match.group(1)

    missing = [
        f"{module.__name__}.{name}"
        for module in modules
        for name in module.__all__
        if entry(f"{module.__name__}.{name}") is None
    ]
    assert not missing, f"public names with no entry in docs/api.rst: {missing}"
    callables = [f"childproc.{n}" for n in childproc.__all__ if inspect.isfunction(getattr(childproc, n))]
    callables += ["childproc.Context", "childproc.Hooks"]
    callables += [
        f"{module.__name__}.{n}"
        for module in modules[1:]
        for n in module.__all__
        if inspect.isfunction(getattr(module, n))
    ]
    for where, cls in classes:  # (inherited methods too: the docs list them under the class)
        names = {m for base in cls.__mro__[:-1] for m, v in vars(base).items() if inspect.isfunction(v)}
        callables += [f"{where}.{cls.__name__}.{m}" for m in sorted(names) if not m.startswith("_")]
    unsigned = [c for c in callables if "sig-paren" not in (entry(c) or "")]
    assert not unsigned, f"entries without a signature (or missing): {unsigned}"
