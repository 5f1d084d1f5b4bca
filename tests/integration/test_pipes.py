"""Pipes, communicate() and run(): real children, real pipes, every close path checked
by the leak check (tests/conftest.py), in every mode where it matters."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import childproc
from childproc import DEVNULL, PIPE, STDOUT, Context, Hooks, SigchldOwner, _dispatching

from .procutil import children, open_fds, proc_state, wait_until
from .test_hostile import default_sigint

MIB = 1 << 20


# -- the constants and the results -------------------------------------------------
def test_constants_are_subprocess_s() -> None:
    assert (PIPE, STDOUT, DEVNULL) == (subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL)


@pytest.mark.timeout(30)
def test_run_captures_and_returns_a_completed_process(ctx: Context) -> None:
    r = ctx.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True)
    assert isinstance(r, subprocess.CompletedProcess) and isinstance(r, childproc.CompletedProcess)
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert r.args == ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
    assert r.event.pid == r.pid and r.event.returncode == 3
    assert ctx.children == frozenset()


@pytest.mark.timeout(30)
def test_run_without_pipes_inherits_and_waits(sel: Context, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as f:
        r = sel.run(["/bin/sh", "-c", "echo to-file"], stdout=f)
    assert r.returncode == 0 and r.stdout is None and out.read_bytes() == b"to-file\n"


@pytest.mark.timeout(30)
def test_run_check_raises_called_process_error_of_both_hierarchies(sel: Context) -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        sel.run(["/bin/sh", "-c", "echo no >&2; exit 4"], stderr=PIPE, check=True)
    exc = info.value
    assert isinstance(exc, childproc.ChildprocError) and isinstance(exc, childproc.CalledProcessError)
    assert (exc.returncode, exc.stderr) == (4, b"no\n")
    assert exc.event is not None and exc.event.returncode == 4
    again = pickle.loads(pickle.dumps(exc))
    assert (type(again), again.returncode, again.stderr, str(again)) == (type(exc), 4, b"no\n", str(exc))


@pytest.mark.timeout(30)
def test_run_timeout_kills_reaps_and_keeps_the_output(ctx: Context) -> None:
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        ctx.run(["/bin/sh", "-c", "echo partial; exec sleep 30"], capture_output=True, timeout=0.5)
    assert time.monotonic() - t0 < 5
    exc = info.value
    assert isinstance(exc, childproc.TimeoutExpired) and isinstance(exc, childproc.ChildprocError)
    assert exc.output in (None, b"partial\n") and exc.timeout == 0.5  # (None only on a very slow machine)
    assert exc.event is not None and exc.event.returncode == -signal.SIGKILL
    assert ctx.children == frozenset()
    assert exc.stderr is None  # (nothing read from it: None, as subprocess has it, not b"")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.output, again.timeout) == (b"partial\n", 0.5)


@pytest.mark.timeout(30)
def test_run_cut_short_kills_and_reaps_a_child_not_killed_on_close(sel: Context) -> None:
    """A Ctrl-C in run(kill_on_close=False): the child is killed and reaped before the
    interrupt goes on (it was killed and forgotten: a zombie for good)."""
    with default_sigint():
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                sel.run(["sleep", "30"], kill_on_close=False, capture_output=True)
        finally:
            timer.join()
    assert not sel.children
    assert wait_until(lambda: not children(), timeout=5), children()


@pytest.mark.timeout(30)
def test_a_kept_timeout_error_holds_no_fd(ctx: Context) -> None:
    """An application may keep the TimeoutExpired (a list of failures): its traceback
    keeps the frames it came through, and none of them may keep an fd of childproc's."""
    before = open_fds()
    kept: list[BaseException] = []
    for _ in range(3):
        try:
            ctx.run(["sleep", "30"], capture_output=True, timeout=0.05)
        except subprocess.TimeoutExpired as exc:
            kept.append(exc)
        child = ctx.spawn(["sleep", "30"], stdout=PIPE)
        try:
            child.communicate(timeout=0.05)
        except subprocess.TimeoutExpired as exc:
            kept.append(exc)
        child.kill()
        child.communicate()
        child.release()
    assert len(kept) == 6 and open_fds() == before


@pytest.mark.timeout(30)
def test_run_argument_errors_are_value_errors(sel: Context) -> None:
    with pytest.raises(ValueError, match="stdin and input"):
        sel.run(["true"], input=b"x", stdin=PIPE)
    with pytest.raises(ValueError, match="capture_output"):
        sel.run(["true"], capture_output=True, stdout=PIPE)
    with pytest.raises(childproc.InvalidArgumentError, match="STDOUT is only for stderr"):
        sel.spawn(["true"], stdout=STDOUT)
    with pytest.raises(childproc.InvalidArgumentError, match="stdin must be"):
        sel.spawn(["true"], stdin=-7)
    with pytest.raises(childproc.InvalidArgumentError, match="stdout must be"):
        sel.spawn(["true"], stdout="out.txt")


@pytest.mark.timeout(30)
def test_input_of_the_wrong_type_is_a_type_error_as_in_subprocess(
    sel: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``subprocess`` raises TypeError for str input to a binary pipe: an ``except
    TypeError`` written for it still catches childproc's error (a trial found a
    ValueError only). No child starts (one did, and was killed)."""
    started: list[object] = []
    spawn = sel.spawn

    def spy(*args: Any, **kwargs: Any) -> Any:
        started.append(args)
        return spawn(*args, **kwargs)

    monkeypatch.setattr(sel, "spawn", spy)
    for bad in ("text", 5):
        with pytest.raises(TypeError, match="input") as info:
            sel.run(["cat"], input=bad, stdout=PIPE)
        assert isinstance(info.value, childproc.ChildprocError)
    assert not started
    assert sel.run(["cat"], input=bytearray(b"ok"), capture_output=True).stdout == b"ok"


#: What run() and spawn() refuse, and what each says (a regular expression).
_REFUSED: dict[str, list[tuple[dict[str, Any], str]]] = {
    "run": [
        ({"shell": True}, r"shell=: .*\['/bin/sh', '-c', command\]"),
        ({"executable": "/bin/true"}, "argv\\[0\\]"),
        ({"preexec_fn": print}, "ctx.fork"),
        ({"close_fds": True}, "close-on-exec"),
        ({"capture_ouput": True}, "did you mean 'capture_output'"),
        ({"kill_tre": True}, "did you mean 'kill_tree'"),
        ({"frobnicate": 1}, "Context.run says"),
        # trio's and anyio's run_process, ported by changing the call:
        ({"capture_stdout": True}, "stdout=PIPE"),
        ({"stdin": b"data"}, "input="),
        ({"task_status": object()}, "await ctx.run"),
    ],
    # Popen(argv, shell=..., close_fds=...) ported as ctx.spawn(...):
    "spawn": [
        ({"shell": True}, r"spawn\(\) does not take shell=: .*\['/bin/sh', '-c', command\]"),
        ({"close_fds": False}, "close-on-exec"),
        ({"preexec_fn": print}, "ctx.fork"),
        ({"startupinfo": None}, "Windows only"),
        ({"stdoutt": PIPE}, "did you mean 'stdout'"),
        ({"capture_output": True}, r"that is run\(\)'s: use ctx.run\(...\), or .*child.communicate"),
        ({"timeout": 5}, r"that is run\(\)'s"),  # (not "did you mean 'stdout'")
        ({"capture_stdout": True}, "give stdout=PIPE$"),
        ({"frobnicate": 1}, "Context.spawn says what it takes"),
    ],
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", sorted(_REFUSED))
def test_run_and_spawn_refuse_what_they_do_not_take_saying_what_to_do(sel: Context, call: str) -> None:
    """subprocess.run/Popen arguments run() or spawn() does not take, and misspellings:
    a TypeError (as Python's own for an unexpected keyword) of childproc's that says
    what to do, naming the call (spawn's used to be Python's bare one). Nothing is
    started."""
    for options, says in _REFUSED[call]:
        with pytest.raises(childproc.ArgumentTypeError, match=says) as info:
            getattr(sel, call)(["true"], **options)
        assert isinstance(info.value, TypeError) and isinstance(info.value, childproc.InvalidArgumentError)
    assert sel.children == frozenset()


@pytest.mark.timeout(30)
def test_an_unknown_encoding_is_refused_before_the_child_starts(sel: Context) -> None:
    """Refused before the child starts, with an error that is also a LookupError (as
    Popen raises), and no pipe left open (childproc used to start the child and
    fail only when the pipe was read). Refused with no pipe too: the argument is
    wrong whether or not a pipe would use it."""
    fds = len(os.listdir("/proc/self/fd"))
    for call in (sel.spawn, sel.run):
        with pytest.raises(
            childproc.UnknownEncodingError, match=r"unknown encoding 'utf-99'.*'utf-8'"
        ) as info:
            call(["true"], stdout=PIPE, encoding="utf-99")
        assert isinstance(info.value, LookupError) and isinstance(info.value, childproc.InvalidArgumentError)
    with pytest.raises(TypeError, match="encoding must be a str") as wrong:
        sel.spawn(["true"], stdout=PIPE, encoding=8)  # type: ignore[arg-type]
    assert isinstance(wrong.value, childproc.InvalidArgumentError)
    with pytest.raises(childproc.UnknownEncodingError):
        sel.spawn(["true"], encoding="utf-99")
    assert sel.children == frozenset() and len(os.listdir("/proc/self/fd")) == fds
    assert sel.run(["printf", "\\303\\251"], capture_output=True, encoding="UTF8").stdout == "\u00e9"


@pytest.mark.timeout(30)
def test_run_passes_on_event_to_spawn(sel: Context) -> None:
    seen: list[int | None] = []
    done = sel.run(["sh", "-c", "exit 3"], on_event=lambda child, event: seen.append(event.returncode))
    assert done.returncode == 3 and seen == [3]


def test_run_hands_spawn_every_keyword_spawn_takes() -> None:
    """run()'s list of what goes to spawn is Context.spawn's keyword-only parameters."""
    import inspect  # noqa: PLC0415

    from childproc import _run  # noqa: PLC0415

    params = inspect.signature(Context.spawn).parameters.values()
    assert {p.name for p in params if p.kind is p.KEYWORD_ONLY} == _run.SPAWN_OPTIONS


@pytest.mark.timeout(30)
def test_a_failed_spawn_leaves_no_pipe_open(sel: Context) -> None:
    with pytest.raises(FileNotFoundError):
        sel.run(["/nonexistent/program"], capture_output=True, input=b"x")
    with pytest.raises(FileNotFoundError):
        sel.spawn(["/nonexistent/program"], stdin=PIPE, stdout=PIPE, stderr=PIPE)
    # (the leak check finds any pipe left open)


# -- no deadlock, nothing lost ---------------------------------------------------------
@pytest.mark.timeout(120)
def test_64_mib_each_way_through_both_pipes(ctx: Context) -> None:
    script = "cat; head -c 67108864 /dev/zero >&2"
    data = os.urandom(MIB) * 64
    r = ctx.run(["/bin/sh", "-c", script], input=data, capture_output=True)
    assert r.returncode == 0
    assert len(r.stdout) == 64 * MIB and r.stdout == data
    assert len(r.stderr) == 64 * MIB and r.stderr.count(0) == 64 * MIB


@pytest.mark.timeout(60)
def test_a_child_that_closes_its_stdin_early_is_not_an_error(sel: Context) -> None:
    r = sel.run(["/bin/sh", "-c", "exec 0<&-; echo done"], input=b"x" * (16 * MIB), capture_output=True)
    assert (r.returncode, r.stdout) == (0, b"done\n")


@pytest.mark.timeout(30)
def test_a_grandchild_holding_the_pipes_holds_nobody_up(ctx: Context) -> None:
    t0 = time.monotonic()
    r = ctx.run(["/bin/sh", "-c", "sleep 30 & echo $!; echo hi"], capture_output=True, text=True)
    took = time.monotonic() - t0
    grandchild = int(r.stdout.split()[0])
    try:
        assert r.stdout.split()[1] == "hi" and r.returncode == 0
        assert took < 1.5, f"run() waited {took:.2f}s for a grandchild holding the pipe"
    finally:
        os.kill(grandchild, signal.SIGKILL)


@pytest.mark.timeout(30)
def test_output_written_just_before_the_exit_is_kept(sel: Context) -> None:
    # The child writes a lot and exits at once: all of it is in the pipe at the exit.
    r = sel.run(["/bin/sh", "-c", "head -c 3000000 /dev/zero; echo end"], capture_output=True)
    assert len(r.stdout) == 3_000_004 and r.stdout.endswith(b"end\n")


@pytest.mark.timeout(30)
def test_communicate_timeout_then_again_loses_nothing(ctx: Context) -> None:
    child = ctx.spawn(["/bin/sh", "-c", "echo a; echo b >&2; sleep 0.8; echo c"], stdout=PIPE, stderr=STDOUT)
    with pytest.raises(subprocess.TimeoutExpired) as info:
        child.communicate(timeout=0.3)
    assert b"a\nb\n".startswith(info.value.output or b"")  # all of it unless the machine is very slow
    assert child.returncode is None  # not killed
    with pytest.raises(childproc.InvalidArgumentError, match="no new input"):
        child.communicate(b"more")
    assert child.communicate() == (b"a\nb\nc\n", None)
    assert child.returncode == 0
    # Once it returned, the same output again (as Popen's); no new input.
    assert child.communicate() == (b"a\nb\nc\n", None)
    with pytest.raises(childproc.InvalidArgumentError, match="give no input"):
        child.communicate(b"more")


@pytest.mark.timeout(30)
def test_text_mode_and_universal_newlines(sel: Context) -> None:
    script = "printf 'a\\r\\nb\\rc\\n'; cat"
    r = sel.run(["/bin/sh", "-c", script], input="é\n", capture_output=True, text=True)
    assert r.stdout == "a\nb\nc\né\n"
    with pytest.raises(childproc.InvalidArgumentError, match="text=True"):
        sel.run(["cat"], input="str without text")


# -- the file objects ---------------------------------------------------------------
@pytest.mark.timeout(30)
def test_stdin_stdout_file_objects_talk_to_the_child(ctx: Context) -> None:
    child = ctx.spawn(["/bin/sh", "-c", "read x; echo got $x; exit 2"], stdin=PIPE, stdout=PIPE, text=True)
    assert child.stderr is None
    child.stdin.write("hello\n")
    child.stdin.flush()
    assert child.stdout.readline() == "got hello\n"
    assert child.wait(10) is not None and child.poll() == 2
    child.stdin.close()
    child.stdout.close()
    child.stdout.close()  # (twice: still one close of the fd)


@pytest.mark.timeout(30)
def test_communicate_after_reading_part_through_the_file_object(sel: Context) -> None:
    child = sel.spawn(["/bin/sh", "-c", "echo one; echo two; echo three"], stdout=PIPE)
    assert child.stdout.readline() == b"one\n"  # (the reader may have buffered the rest)
    assert child.communicate() == (b"two\nthree\n", None)


@pytest.mark.timeout(30)
def test_communicate_after_reading_part_through_a_text_reader(sel: Context) -> None:
    """A text reader holds decoded characters (and bytes) of its own: communicate()
    starts with them, as ``subprocess`` does with one pipe, and with two pipes, a
    timeout between, and CRLF line ends too (a new user's trial found them lost)."""
    child = sel.spawn(["printf", "l1\\nl2\\nl3\\n"], stdout=PIPE, text=True)
    assert child.stdout.readline() == "l1\n"
    assert child.communicate() == ("l2\nl3\n", None)
    child = sel.spawn(["printf", "abcdef"], stdout=PIPE, text=True)
    assert child.stdout.read(2) == "ab"
    assert child.communicate() == ("cdef", None)
    # What the reader's decoder keeps back: half of a character, a \r before its \n.
    halves = "printf 'ab\\303'; sleep 0.3; printf '\\251z\\r'; sleep 0.3; printf '\\nw'"
    child = sel.spawn(["sh", "-c", halves], stdout=PIPE, text=True, encoding="utf-8")
    time.sleep(0.1)  # (the first piece is in the pipe: the reader decodes "ab", keeps \303)
    assert child.stdout.read(2) == "ab"
    assert child.communicate() == ("éz\nw", None)
    child = sel.spawn(["sh", "-c", "printf 'ab\\r'; sleep 0.3; printf 'c'"], stdout=PIPE, text=True)
    time.sleep(0.1)
    assert child.stdout.read(2) == "ab"  # (the reader keeps the \r back: is a \n next?)
    assert child.communicate() == ("\nc", None)

    # A decoder with a state of its own: utf-16's byte order, read off the BOM.
    def utf16be(word: str) -> str:
        return "".join(f"\\000{c}" for c in word)

    script = f"printf '\\376\\377{utf16be('he')}'; sleep 0.3; printf '{utf16be('llo')}'"
    child = sel.spawn(["sh", "-c", script], stdout=PIPE, encoding="utf-16")
    time.sleep(0.1)
    assert child.stdout.read(2) == "he"
    assert child.communicate() == ("llo", None)  # (not the rest read as little-endian)
    script = "printf 'one\\r\\ntwo\\r\\n'; printf 'é\\n' >&2; sleep 1; echo three"
    child = sel.spawn(["sh", "-c", script], stdout=PIPE, stderr=PIPE, text=True, encoding="utf-8")
    assert child.stdout.readline() == "one\n"
    assert child.stderr.read(1) == "é"
    with pytest.raises(subprocess.TimeoutExpired) as info:
        child.communicate(timeout=0.5)
    assert info.value.output == b"two\n" and info.value.stderr == b"\n"  # (bytes, as subprocess)
    assert child.communicate(timeout=10) == ("two\nthree\n", "\n")


@pytest.mark.timeout(30)
def test_popen_s_bufsize_and_universal_newlines(sel: Context) -> None:
    """``Popen(..., universal_newlines=True, bufsize=1)`` ports by changing the call: a
    line protocol over a text stdin flushed at each line end, and an unbuffered
    binary one; a wrong type is a TypeError, text and universal_newlines that
    differ a ValueError, as Popen's."""
    with sel.spawn(["cat"], stdin=PIPE, stdout=PIPE, universal_newlines=True, bufsize=1) as cat:
        for word in ("one", "two"):
            cat.stdin.write(word + "\n")  # (no flush: line buffering sends it)
            assert cat.stdout.readline() == word + "\n"
    with sel.spawn(["cat"], stdin=PIPE, stdout=PIPE, bufsize=0) as cat:
        cat.stdin.write(b"raw\n")  # (unbuffered: straight to the pipe)
        assert cat.stdout.read(4) == b"raw\n"
        assert cat.communicate() == (b"", None)
    assert sel.run(["printf", "a\\r\\nb"], capture_output=True, universal_newlines=True).stdout == "a\nb"
    with pytest.raises(TypeError, match="bufsize"):
        sel.spawn(["true"], bufsize="1")  # type: ignore[arg-type]
    assert sel.run(["echo"], stdout=PIPE, bufsize=None).stdout == b"\n"  # (None is -1, as Popen's)
    with pytest.warns(RuntimeWarning, match="line buffering") as record:
        sel.run(["true"], stdout=PIPE, bufsize=1)  # (binary: as Popen, a warning)
    assert {w.filename for w in record} == {__file__}  # (this line, not childproc's)
    with pytest.raises(ValueError, match="universal_newlines"):
        sel.spawn(["true"], text=True, universal_newlines=False)
    assert not sel.children


@pytest.mark.timeout(30)
def test_devnull_fd_and_file_object_sources(sel: Context, tmp_path: Path) -> None:
    r = sel.run(["cat"], stdin=DEVNULL, capture_output=True)
    assert (r.returncode, r.stdout) == (0, b"")
    target = tmp_path / "both"
    with target.open("wb") as f:
        sel.run(["/bin/sh", "-c", "echo o; echo e >&2"], stdout=f.fileno(), stderr=STDOUT)
    assert sorted(target.read_bytes().split()) == [b"e", b"o"]
    r = sel.run(["/bin/sh", "-c", "echo x"], stdout=DEVNULL, stderr=PIPE)
    assert (r.stdout, r.stderr) == (None, b"")


_CROSSED = """
import os, resource, sys
from childproc import PIPE, Context
out, err = (os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for p in sys.argv[1:3])
os.dup2(out, 1); os.dup2(err, 2); os.close(out); os.close(err)
kept = os.open("/dev/null", os.O_RDONLY)  # inheritable, the lowest number free
os.set_inheritable(kept, True)
with Context() as ctx:
    # Crossed: the child's stdout goes where our fd 2 points, its stderr where fd 1 does.
    ctx.run(["/bin/sh", "-c", f"echo to-stdout; echo to-stderr >&2; [ -e /dev/fd/{kept} ] || echo lost >&2"],
            stdout=2, stderr=1)
    # Pipes on the last fds the limit allows: nothing more is needed for the child's stdio.
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    hog = []
    while True:
        try:
            hog.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            break
    for fd in hog[-4:]:
        os.close(fd)
    r = ctx.run(["echo", "near the limit"], capture_output=True)
    for fd in hog[:-4]:
        os.close(fd)
    print(r.stdout.decode().strip(), file=sys.stderr)
"""


@pytest.mark.timeout(30)
def test_crossed_sources_keep_inherited_fds_and_pipes_at_the_fd_limit(tmp_path: Path) -> None:
    """Sources that cross (``stdout=2, stderr=1``) are copied aside only as far as
    needed, on numbers no open fd has (an inherited one stays the child's); and a
    child whose two pipes took the last fds below ``RLIMIT_NOFILE`` starts."""
    out, err = tmp_path / "out", tmp_path / "err"
    proc = subprocess.run(
        [sys.executable, "-c", _CROSSED, str(out), str(err)],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr, out.read_text(), err.read_text())
    assert out.read_text().split() == ["to-stderr"]
    assert err.read_text().split() == ["to-stdout", "near", "the", "limit"]


@pytest.mark.timeout(30)
def test_closing_the_context_closes_the_pipes(sel: Context) -> None:
    """close() closes every pipe end still open, and the application's file objects
    over them say so (none reads a number that may name another file by then)."""
    child = sel.spawn(["/bin/sh", "-c", "echo hi"], stdout=PIPE, stdin=PIPE)
    out, into = child.stdout, child.stdin
    child.wait(10)
    sel.close()
    assert out.closed and into.closed
    with pytest.raises(ValueError):
        out.read()
    into.close()  # (closing again is harmless)


# -- fork -------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_fork_with_pipes(ctx: Context) -> None:
    child = ctx.fork(stdin=PIPE, stdout=PIPE, stderr=DEVNULL)
    if child is None:
        try:
            data = b"".join(iter(lambda: os.read(0, 65536), b""))  # (pytest replaced sys.stdin)
            os.write(1, data.upper())
            os.write(2, b"to devnull\n")
        finally:
            os._exit(7)
    assert child.communicate(b"abc") == (b"ABC", None)
    assert child.returncode == 7


@pytest.mark.timeout(30)
def test_no_other_child_holds_a_stdin_pipe_open(sel: Context) -> None:
    """The parent's ends are close-on-exec and closed in forked children: closing our
    stdin end gives the reader EOF while other children (spawned, forked) run."""
    reader = sel.spawn(["cat"], stdin=PIPE, stdout=DEVNULL)
    other = sel.spawn(["sleep", "5"])
    forked = sel.fork()
    if forked is None:
        time.sleep(5)
        os._exit(0)
    try:
        reader.stdin.close()
        assert reader.wait(3) is not None, "cat never saw EOF: another child holds the pipe"
    finally:
        other.kill()
        forked.kill()
        other.wait(10)
        forked.wait(10)


# -- who learns the exit ------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_communicate_with_a_dispatch_thread(sel: Context) -> None:
    sel.start_dispatch_thread()
    t0 = time.monotonic()
    for _ in range(5):
        r = sel.run(["/bin/sh", "-c", "echo x"], capture_output=True)
        assert r.stdout == b"x\n"
    assert time.monotonic() - t0 < 5  # woken by the delivery, not by a tick


def report_an_exit(ctx: Context) -> None:
    """One turn of a MAINLOOP host's loop: reap a child that exited, if any; report it."""
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    if pid:
        ctx.childproc_reaped(pid, status)


@pytest.mark.timeout(30)
def test_mainloop_run_from_another_thread_and_refused_on_the_reporting_one() -> None:
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.MAINLOOP))
        # No thread has reported yet: this one, which chose the mode, may be the one
        # that reports. Its run() waits, and says so once the child's report is late.
        t0 = time.monotonic()
        with pytest.raises(childproc.StateError, match="no thread has reported"):
            ctx.run(["true"])
        assert time.monotonic() - t0 < 10
        got: list[object] = []

        def worker() -> None:
            got.append(ctx.run(["/bin/sh", "-c", "echo via-host"], capture_output=True))

        t = threading.Thread(target=worker)
        t.start()
        while t.is_alive():  # the host's loop
            report_an_exit(ctx)
            time.sleep(0.01)
        t.join()
        (r,) = got
        assert isinstance(r, childproc.CompletedProcess) and r.stdout == b"via-host\n"
        # A handle's with-block waits for the exit: refused here too, not a hang.
        with pytest.raises(childproc.StateError, match="reports exits"), ctx.spawn(["true"]) as child:
            pass
        pid, status = os.waitpid(child.pid, 0)
        assert ctx.childproc_reaped(pid, status) and child.returncode == 0


@pytest.mark.timeout(30)
def test_mainloop_the_reporting_thread_is_the_one_that_reports() -> None:
    """The host's loop runs on a worker thread and reports; the thread that made the
    context runs children (it was once refused, taken for the reporter). On the
    reporting thread, waits that would last for ever are refused; a poll is not."""
    with Context(SigchldOwner.MAINLOOP) as ctx:
        stop = threading.Event()
        asked: list[Callable[[], object]] = []
        answers: list[object] = []

        def host_loop() -> None:
            while not stop.is_set():
                report_an_exit(ctx)
                while asked:  # (what the test asks of the reporting thread)
                    try:
                        answers.append(asked.pop()())
                    except Exception as exc:
                        answers.append(exc)
                time.sleep(0.01)

        loop = threading.Thread(target=host_loop)
        loop.start()
        try:
            for _ in range(2):
                assert ctx.run(["/bin/sh", "-c", "exit 5"]).returncode == 5
            child = ctx.spawn(["sleep", "30"])
            refused = (child.wait, lambda: child.wait(0.5), child.stop, ctx.wait, lambda: ctx.wait(0.5))
            for ask in (*refused, lambda: child.wait(0), lambda: ctx.wait(0) or None):
                asked.append(ask)
                assert wait_until(lambda: bool(answers), timeout=10)
                answer = answers.pop()
                if ask in refused:
                    assert isinstance(answer, childproc.StateError), answer
                    assert "reports exits" in str(answer)
                else:
                    assert answer is None  # (a look: allowed)
            assert proc_state(child.pid) in ("R", "S"), "stop() sent a signal before refusing"
            ev = child.stop(grace=5)  # (here, another thread: the host reports the exit)
            assert ev is not None and ev.returncode == -signal.SIGTERM
        finally:
            stop.set()
            loop.join()


@pytest.mark.timeout(30)
def test_mainloop_communicate_on_the_thread_that_chose_the_mode_says_why_it_cannot_end() -> None:
    """Before any report, the thread that chose MAINLOOP may be the one that reports:
    its communicate() (run(capture_output=True) too) waits, and raises StateError once
    the child's exit is late to be reported, rather than wait for ever."""
    with Context(SigchldOwner.MAINLOOP) as ctx:
        child = ctx.spawn(["/bin/sh", "-c", "echo out"], stdout=PIPE)
        with pytest.raises(childproc.StateError, match="no thread has reported"):
            child.communicate()
        with pytest.raises(childproc.StateError, match="no thread has reported"):
            ctx.run(["true"], capture_output=True)
        pid, status = os.waitpid(child.pid, 0)
        assert ctx.childproc_reaped(pid, status)
        assert child.communicate() == (b"out\n", None)  # (nothing lost by the first call)


@pytest.mark.timeout(30)
def test_mainloop_a_fork_server_child_needs_no_report() -> None:
    """A fork server's child's exit comes on its exit fd: waiting for it is fine on the
    thread that reports, and on the one that chose the mode (no late-report error)."""
    from childproc import forkserver  # noqa: PLC0415

    with forkserver.ForkServer.start() as server, Context(SigchldOwner.MAINLOOP) as ctx:
        served = ctx.watch_served(server.fork("tests.integration.fs_entries:sleep_then", 3.5, 4))
        ev = served.wait(10)  # (this thread chose the mode: >2 s after the exit, no StateError)
        assert ev is not None and ev.returncode == 4
        helper = ctx.spawn(["true"])  # this thread becomes the one that reports
        pid, status = os.waitpid(helper.pid, 0)
        assert ctx.childproc_reaped(pid, status) and ctx._reports_here()
        served = ctx.watch_served(server.fork("tests.integration.fs_entries:exit_with", 5))
        ev = served.wait(10)
        assert ev is not None and ev.returncode == 5
        served = ctx.watch_served(server.fork("tests.integration.fs_entries:exit_with", 6))
        assert ctx.wait(10) == 1 and served.returncode == 6  # (its exit may end a ctx.wait() here)


@pytest.mark.timeout(30)
def test_mainloop_a_new_thread_is_not_the_old_reporter() -> None:
    """The thread that reports is named by its ident and its kernel id: a new thread
    that got the ident of a reporter that ended is not taken for it."""
    with Context(SigchldOwner.MAINLOOP) as ctx:
        seen: list[tuple[int, bool]] = []

        def report_one() -> None:
            child = ctx.spawn(["true"])
            pid, status = os.waitpid(child.pid, 0)
            ctx.childproc_reaped(pid, status)
            seen.append((threading.get_ident(), ctx._reports_here()))

        def look() -> None:
            seen.append((threading.get_ident(), ctx._reports_here()))

        for _ in range(20):  # (until the new thread gets the reporter's ident, as it mostly does)
            seen.clear()
            for target in (report_one, look):
                t = threading.Thread(target=target)
                t.start()
                t.join()
            (ident_a, a_reports), (ident_b, b_reports) = seen
            assert a_reports and not b_reports, seen
            if ident_a == ident_b:
                break
        else:
            pytest.skip("no thread got a dead thread's ident here")


@pytest.mark.timeout(30)
def test_mainloop_an_exit_reported_for_a_running_child_is_refused() -> None:
    """A host that reports a pid it did not reap (a wrong pid, a report before the
    reap) would make childproc forget a child that runs on: refused, the child kept."""
    with Context(SigchldOwner.MAINLOOP) as ctx:
        child = ctx.spawn(["sleep", "30"])
        with pytest.raises(childproc.InvalidArgumentError, match="still running"):
            ctx.childproc_reaped(child.pid, 0)
        assert ctx.children == {child.pid} and child.returncode is None
        child.kill()  # (still signalled through its pidfd: it is still the context's)
        pid, status = os.waitpid(child.pid, 0)
        assert ctx.childproc_reaped(pid, status) and child.returncode == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_mainloop_a_late_report_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A host that reaped a child and forgot to report it leaves a waiter waiting; the
    waiter says so in the log, once, after LATE_REPORT_S."""
    monkeypatch.setattr(_dispatching, "LATE_REPORT_S", 0.5)
    with Context(SigchldOwner.MAINLOOP) as ctx:
        child = ctx.spawn(["true"])
        os.waitpid(child.pid, 0)  # the host reaps, and does not report
        with caplog.at_level(logging.WARNING, logger="childproc"):
            got: list[object] = []
            waiter = threading.Thread(target=lambda: got.append(child.wait(4)))
            waiter.start()
            waiter.join()
        assert got == [None]
        late = [r.getMessage() for r in caplog.records if "has not been reported" in r.getMessage()]
        assert len(late) == 1 and str(child.pid) in late[0], late
        ctx.childproc_reaped(child.pid, 0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dispatch_thread", [False, True], ids=["alone", "dispatch-thread"])
@pytest.mark.parametrize("kill_on_close", [True, False])
def test_closing_the_context_wakes_a_communicate(dispatch_thread: bool, kill_on_close: bool) -> None:
    """A communicate() on another thread, for a child still running whose pipes are at
    EOF: the close raises ClosedError in it at once (unless, killed by the close, its
    exit reached communicate() first). Beside a dispatch thread it noticed only at its
    1 s tick, then returned (b'', b'') for the running child."""
    ctx = Context(SigchldOwner.SELECTIVE_REAP)
    if dispatch_thread:
        ctx.start_dispatch_thread()
    script = "exec >&- 2>&-; sleep 30"
    child = ctx.spawn(["/bin/sh", "-c", script], stdout=PIPE, stderr=PIPE, kill_on_close=kill_on_close)
    outcome: list[object] = []

    def talk() -> None:
        try:
            outcome.append(child.communicate())
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=talk)
    t.start()
    try:
        assert wait_until(lambda: bool(child._exit_wakers), timeout=5)
        time.sleep(0.2)  # (its pipes read to EOF)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # (without kill_on_close: it runs on)
            ctx.close()
        t0 = time.monotonic()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 0.5
        (got,) = outcome
        # Killed by the close, its exit may reach communicate() first: then it returns.
        delivered = kill_on_close and got == (b"", b"") and child.returncode == -signal.SIGKILL
        assert isinstance(got, childproc.ClosedError) or delivered, (got, child.returncode)
    finally:
        if not kill_on_close:
            os.kill(child.pid, signal.SIGKILL)
    assert wait_until(lambda: proc_state(child.pid) is None, timeout=10)


# -- regressions found in review --------------------------------------------------------
@pytest.mark.timeout(30)
def test_fork_reads_from_another_child_s_pipe(sel: Context) -> None:
    """subprocess's pipeline idiom with fork: the forked child's stdin is another
    child's stdout pipe, which the forked child keeps though it closes every other
    pipe of the parent's."""
    first = sel.spawn(["/bin/sh", "-c", "echo through"], stdout=PIPE)
    second = sel.fork(stdin=first.stdout, stdout=PIPE)
    if second is None:
        os.write(1, b"".join(iter(lambda: os.read(0, 65536), b"")).upper())
        os._exit(0)
    first.stdout.close()
    assert second.communicate() == (b"THROUGH\n", None)
    assert first.wait(10) is not None and second.returncode == 0


@pytest.mark.timeout(30)
def test_pass_fds_above_the_redirected_fds_survive(sel: Context) -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()  # numbered above out_w: where the redirections' copies went
    try:
        child = sel.spawn(["cat", f"/dev/fd/{in_r}"], stdout=out_w, pass_fds=[in_r])
        os.close(out_w)
        os.write(in_w, b"kept")
        os.close(in_w)
        assert os.read(out_r, 100) == b"kept"
        assert child.wait(10) is not None and child.returncode == 0
    finally:
        for fd in (out_r, in_r):
            os.close(fd)


@pytest.mark.timeout(30)
def test_run_from_a_callback_on_the_dispatch_thread(sel: Context) -> None:
    got: list[object] = []
    done = threading.Event()

    def on_exit(child: childproc.Child, event: childproc.ChildEvent) -> None:
        got.append(sel.run(["/bin/sh", "-c", "echo inner"], capture_output=True, timeout=10).stdout)
        done.set()

    sel.start_dispatch_thread()
    sel.spawn(["true"], on_exit)
    assert done.wait(15) and got == [b"inner\n"]


@pytest.mark.timeout(30)
def test_after_a_timed_out_communicate_the_pipe_reads_blocking(sel: Context) -> None:
    child = sel.spawn(["/bin/sh", "-c", "echo a; sleep 0.4; echo b"], stdout=PIPE)
    with pytest.raises(childproc.TimeoutExpired) as info:
        child.communicate(timeout=0.1)
    assert b"a\n".startswith(info.value.output or b"")
    assert (info.value.output or b"") + child.stdout.read() == b"a\nb\n"  # (blocking again, as subprocess)
    assert child.wait(10) is not None


@pytest.mark.timeout(30)
def test_a_handle_s_with_block_closes_its_pipes_and_waits_as_popen_s(sel: Context) -> None:
    """``with ctx.spawn(...) as p:`` is ``with Popen(...) as p:`` ported by one line:
    the buffered input is written, the pipes closed, the exit waited for, and
    ``returncode`` set; no zombie is left (it released the child once, leaving one
    per block for good)."""
    with sel.spawn(["sh", "-c", 'read line; [ "$line" = x ] && exit 3'], stdin=PIPE, stdout=PIPE) as p:
        p.stdin.write(b"x\n")  # (buffered: written when the block ends, as Popen's)
        out = p.stdout
    assert out.closed and p.returncode == 3 and p.poll() == 3
    final = p.wait()
    assert final is not None and final.returncode == 3
    assert p.pid not in children()
    with sel.spawn(["sh", "-c", "exit 4"]) as q:  # no pipes: waits all the same
        pass
    assert q.returncode == 4 and q.pid not in children()


@pytest.mark.timeout(30)
def test_a_handle_s_with_block_closes_the_read_ends_before_it_writes_stdin(sel: Context) -> None:
    """As Popen's: a child that writes more than a pipe holds before it reads its stdin
    must not deadlock the block's end (the reader closed first lets it go on)."""
    script = "head -c 200000 /dev/zero; cat > /dev/null"
    with sel.spawn(["sh", "-c", script], stdin=PIPE, stdout=PIPE) as p:
        p.stdin.write(b"y" * 65536)
        p.stdin.write(b"z" * 100)  # (buffered: written at the end)
    assert p.returncode is not None


@pytest.mark.timeout(30)
def test_what_was_written_to_stdin_goes_first_in_communicate(sel: Context) -> None:
    """More than a pipe holds, written through ``child.stdin`` before ``communicate()``:
    written first, waiting for the child to read it, as Popen's (the pipe made
    non-blocking first raised BlockingIOError)."""
    child = sel.spawn(["sh", "-c", "sleep 0.3; wc -c"], stdin=PIPE, stdout=PIPE)
    child.stdin.write(b"y" * 65536)
    child.stdin.write(b"z" * 100)  # (buffered)
    assert child.communicate(b"!") == (b"65637\n", None)


@pytest.mark.timeout(30)
def test_a_ctrl_c_in_the_with_block_s_stdin_flush_still_closes_stdin(sel: Context) -> None:
    """Interrupted while it writes stdin's buffer into a full pipe, the block's end
    still closes stdin (as BufferedWriter.close() does): the child sees EOF."""
    main_thread = threading.main_thread().ident
    child = sel.spawn(["sh", "-c", "sleep 1; cat > /dev/null"], stdin=PIPE)
    timer = threading.Timer(0.3, signal.pthread_kill, (main_thread, signal.SIGINT))
    with default_sigint():
        try:
            with pytest.raises(KeyboardInterrupt), child:
                child.stdin.write(b"y" * 65536)
                child.stdin.write(b"z" * 100)  # (left in the buffer: the pipe is full)
                timer.start()
        finally:
            timer.cancel()
            timer.join()
    assert child.stdin.closed
    assert child.wait(10) is not None and child.returncode == 0


@pytest.mark.timeout(30)
def test_a_handle_s_with_block_left_by_ctrl_c_waits_briefly_and_keeps_watching(sel: Context) -> None:
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), sel.spawn(["sleep", "30"]) as p:
        raise KeyboardInterrupt
    assert time.monotonic() - started < 5
    assert p.returncode is None and p.pid in sel.children  # still watched: reaped once it dies
    p.kill()
    assert p.wait(10) is not None and p.returncode == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_releasing_the_handle_closes_its_pipes(sel: Context) -> None:
    with sel.spawn(["cat"], stdin=PIPE, stdout=PIPE, kill_on_close=True) as child:
        stdin = child.stdin
    assert stdin.closed
    assert child._io is not None and child._io.pipes is not None
    assert child._io.pipes.parent == [-1, -1, -1]
