"""Sessions, groups and trees: real processes, real signals, real cgroups (this machine
and CI run as root with a cgroup2 hierarchy). The leak check (tests/conftest.py)
fails a test that leaves a tree's cgroup, a child or a zombie behind."""

from __future__ import annotations

import atexit
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import childproc
from childproc import (
    ChildExitedError,
    Context,
    InvalidArgumentError,
    SigchldOwner,
    StateError,
    _cgroup,
    _reaping,
)

from .procutil import alive, children, fd_room, stat_fields, wait_until
from .test_hostile import default_sigint

CGROUPS = _cgroup.home() is not None
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="this process may not make cgroups here")
KINDS = [pytest.param("cgroup", marks=needs_cgroups), "process-group"]


def _pids_of(report: Path, count: int) -> list[int]:
    """The pids the test tree wrote to ``report`` (one per line), once ``count`` are there."""
    assert wait_until(lambda: report.exists() and len(report.read_text().split()) >= count, timeout=10)
    return [int(p) for p in report.read_text().split()]


# -- sessions and groups ---------------------------------------------------------
@pytest.mark.timeout(30)
def test_spawn_and_fork_start_new_session_and_process_group(ctx: Context) -> None:
    a = ctx.spawn(["sleep", "30"], start_new_session=True)
    b = ctx.spawn(["sleep", "30"], process_group=0)
    c = ctx.spawn(["sleep", "30"], process_group=b.pid)  # joins b's group
    d = ctx.fork(process_group=0)
    if d is None:
        os.execvp("sleep", ["sleep", "30"])
    try:
        assert wait_until(lambda: stat_fields(d.pid)[2] == str(d.pid), timeout=5)
        assert stat_fields(a.pid)[3] == str(a.pid) and stat_fields(a.pid)[2] == str(
            a.pid
        )  # session and group leader
        assert stat_fields(b.pid)[2] == str(b.pid) and stat_fields(b.pid)[3] != str(b.pid)
        assert stat_fields(c.pid)[2] == str(b.pid)
        assert (a.tree_guarantee, b.tree_guarantee) == (None, None)
    finally:
        for child in (a, b, c, d):
            child.kill()
            child.wait()


@pytest.mark.timeout(30)
def test_forked_child_starts_its_own_session() -> None:
    with Context(SigchldOwner.PIDFD) as c:
        child = c.fork(start_new_session=True)
        if child is None:
            os._exit(0 if os.getsid(0) == os.getpid() else 1)
        assert child.wait(10) is not None and child.returncode == 0


@pytest.mark.timeout(30)
def test_group_options_are_checked(sel: Context) -> None:
    with pytest.raises(InvalidArgumentError, match="not both"):
        sel.spawn(["true"], start_new_session=True, process_group=0)
    for bad in (-1, True, "0"):
        with pytest.raises(InvalidArgumentError, match="process_group must be"):
            sel.spawn(["true"], process_group=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="kill_tree must be"):
        sel.spawn(["true"], kill_tree="yes")
    with pytest.raises(InvalidArgumentError, match="cannot join group"):
        sel.spawn(["true"], kill_tree="process-group", process_group=os.getpgrp())
    assert sel.children == frozenset()


@pytest.mark.timeout(30)
def test_signal_group_reaches_the_group_while_the_leader_is_unreaped(ctx: Context, tmp_path: Path) -> None:
    report = tmp_path / "pids"
    leader = ctx.spawn(["sh", "-c", f'sleep 60 & echo $! >> "{report}"; wait'], process_group=0)
    (grandchild,) = _pids_of(report, 1)
    assert stat_fields(grandchild)[2] == str(leader.pid)
    leader.signal_group(signal.SIGTERM)
    event = leader.wait(10)
    assert event is not None and event.returncode == -signal.SIGTERM
    assert wait_until(lambda: not alive(grandchild), timeout=5)
    with pytest.raises(ChildExitedError, match="process group id may now name another group"):
        leader.signal_group(signal.SIGTERM)  # reaped: never a stranger's group


@pytest.mark.timeout(30)
def test_signal_group_needs_a_child_that_leads_its_group(sel: Context) -> None:
    child = sel.spawn(["sleep", "30"])
    try:
        with pytest.raises(StateError, match="does not lead a process group"):
            child.signal_group(signal.SIGTERM)
        with pytest.raises(StateError, match="kill_tree=True"):
            child.kill_tree()
        assert child.tree_guarantee is None
    finally:
        child.kill()
        child.wait()


@pytest.mark.timeout(30)
def test_signal_group_is_refused_where_the_application_reaps() -> None:
    with Context(SigchldOwner.MAINLOOP) as c:
        child = c.spawn(["sleep", "30"], process_group=0)
        try:
            with pytest.raises(StateError, match="MAINLOOP"):
                child.signal_group(signal.SIGTERM)
        finally:
            child.kill()
            pid, status = os.waitpid(child.pid, 0)
            c.childproc_reaped(pid, status)
            c.dispatch()


@pytest.mark.timeout(30)
def test_a_reap_after_callback_zombie_keeps_its_group_signallable(tmp_path: Path) -> None:
    """The leader's zombie reserves the group id: from the exit callback (the child
    is still a zombie there), the group may still be signalled, and it is."""
    report = tmp_path / "pids"
    seen: list[int] = []

    def on_exit(child: childproc.Child, event: childproc.ChildEvent) -> None:
        child.signal_group(signal.SIGKILL)  # the descendant is still in the group
        seen.append(event.pid)

    with Context(SigchldOwner.SELECTIVE_REAP) as c:
        child = c.spawn(
            ["sh", "-c", f'sleep 60 & echo $! >> "{report}"'],
            on_exit,
            process_group=0,
            reap_after_callback=True,
        )
        (grandchild,) = _pids_of(report, 1)
        assert child.wait(10) is not None and seen == [child.pid]
        assert wait_until(lambda: not alive(grandchild), timeout=5)


# -- trees -------------------------------------------------------------------------
_TREE_SCRIPT = """
report="$1"
echo $$ >> "$report"
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do
  sleep 60 & echo $! >> "$report"                       # plain children
  setsid sleep 60 & echo $! >> "$report"                # a new session: leaves the group
  sh -c 'sleep 60 & echo $! >> "$0"' "$report" &        # double fork: orphaned at once
  echo $! >> "$report"
done
sh -c 'setsid sh -c "sleep 60 & echo \\$! >> \\"\\$0\\"; wait" "$0" & echo $! >> "$0"' "$report"
wait
"""  # 51 long-lived: the shell, 16 x 3 sleeps (one plain, one setsid, one double-forked), a
# setsid'd shell and its sleep


def _tree(ctx: Context, tmp_path: Path, kind: str, **options: object) -> tuple[childproc.Child, list[int]]:
    report = tmp_path / "tree"
    child = ctx.spawn(["sh", "-c", _TREE_SCRIPT, "sh", str(report)], kill_tree=kind, **options)  # type: ignore[arg-type]
    return child, _pids_of(report, 66)  # (each double fork also reports its short-lived shell)


@pytest.mark.timeout(60)
@needs_cgroups
def test_a_cgroup_tree_kill_leaves_nothing(ctx: Context, tmp_path: Path) -> None:
    child, _ = _tree(ctx, tmp_path, "cgroup")
    assert child.tree_guarantee == "cgroup"
    tree = child._tree
    assert isinstance(tree, _cgroup.CgroupTree)
    assert wait_until(lambda: len(tree.pids()) >= 51, timeout=10), tree.pids()
    members = tree.pids()
    child.kill_tree()
    event = child.wait(10)
    assert event is not None and event.returncode == -signal.SIGKILL
    assert wait_until(lambda: not any(alive(p) for p in members), timeout=5), [p for p in members if alive(p)]


@pytest.mark.timeout(60)
def test_a_process_group_tree_kill_leaves_only_the_documented_escapes(ctx: Context, tmp_path: Path) -> None:
    """The fallback reaches the group: what left it (setsid) survives, as documented;
    the test kills those itself."""
    child, _ = _tree(ctx, tmp_path, "process-group")
    assert child.tree_guarantee == "process-group"
    time.sleep(0.2)
    pids = [int(p) for p in (tmp_path / "tree").read_text().split()]
    in_group = [p for p in pids if alive(p) and stat_fields(p)[2] == str(child.pid)]
    escaped = [p for p in pids if alive(p) and stat_fields(p)[2] != str(child.pid)]
    assert len(in_group) >= 30 and escaped
    child.kill_tree()
    try:
        assert child.wait(10) is not None
        assert wait_until(lambda: not any(alive(p) for p in in_group), timeout=5)
        assert all(
            stat_fields(p)[3] == stat_fields(p)[2] for p in escaped if alive(p)
        )  # each one left by setsid
    finally:
        for p in escaped:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # LIBXL_ALWAYS made this process a subreaper: the escapes came back here, and the
        # mode reaps them (as children nobody made) when it dispatches.
        assert wait_until(lambda: ctx.dispatch() >= 0 and not set(escaped) & set(children()), timeout=5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_run_timeout_kills_the_whole_tree(ctx: Context, tmp_path: Path, kind: str) -> None:
    report = tmp_path / "pids"
    script = f'sleep 60 & echo $! >> "{report}"; sleep 60 & echo $! >> "{report}"; wait'
    t0 = time.monotonic()
    with pytest.raises(childproc.TimeoutExpired) as info:
        ctx.run(["sh", "-c", script], kill_tree=kind, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert info.value.event is not None and info.value.event.returncode == -signal.SIGKILL
    for pid in _pids_of(report, 2):
        assert wait_until(lambda p=pid: not alive(p), timeout=5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_kill_on_close_kills_the_tree(tmp_path: Path, kind: str) -> None:
    report = tmp_path / "pids"
    with Context(SigchldOwner.PIDFD) as c:
        c.spawn(["sh", "-c", f'sleep 60 & echo $! >> "{report}"; wait'], kill_tree=kind, kill_on_close=True)
        (grandchild,) = _pids_of(report, 1)
    assert wait_until(lambda: not alive(grandchild), timeout=5)


@pytest.mark.timeout(60)
@needs_cgroups
def test_descendants_left_after_the_child_exited_are_reached_and_the_cgroup_goes(
    sel: Context, tmp_path: Path
) -> None:
    report = tmp_path / "pids"
    child = sel.spawn(["sh", "-c", f'setsid sleep 60 & echo $! >> "{report}"'], kill_tree=True)
    (orphan,) = _pids_of(report, 1)
    assert child.wait(10) is not None and child.returncode == 0
    tree = child._tree
    assert isinstance(tree, _cgroup.CgroupTree) and not tree.removed and tree.pids() == [orphan]
    child.kill_tree()  # after the exit: still exactly its tree
    assert wait_until(lambda: not alive(orphan), timeout=5)
    assert wait_until(lambda: tree.wait_empty(0), timeout=5)


@pytest.mark.timeout(60)
@needs_cgroups
def test_a_forked_child_is_in_its_cgroup_before_fork_returns(sel: Context) -> None:
    r, w = os.pipe()
    child = sel.fork(kill_tree=True)
    if child is None:
        os.close(r)
        with open("/proc/self/cgroup") as f:
            line = next(x for x in f if x.startswith("0::"))
        os.write(w, line.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.read().strip()
    assert child.wait(10) is not None and child.returncode == 0
    assert line.endswith("/" + child._tree.name)  # type: ignore[union-attr]


@pytest.mark.timeout(60)
@needs_cgroups
def test_a_spawned_child_cannot_fork_outside_its_cgroup(sel: Context, tmp_path: Path) -> None:
    """The program's very first fork lands in the tree (the trampoline joined first)."""
    report = tmp_path / "cg"
    for _ in range(20):
        report.unlink(missing_ok=True)
        child = sel.spawn(["sh", "-c", f'cat /proc/self/cgroup > "{report}"'], kill_tree=True)
        assert child.wait(10) is not None and child.returncode == 0
        line = next(x for x in report.read_text().splitlines() if x.startswith("0::"))
        assert line.endswith("/" + child._tree.name)  # type: ignore[union-attr]


@pytest.mark.timeout(60)
@needs_cgroups
def test_freeze_thaw_and_cpu_time(sel: Context, tmp_path: Path) -> None:
    child = sel.spawn(
        ["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 60"], kill_tree=True
    )
    try:
        assert wait_until(lambda: sum(child.tree_cpu_times()) > 0.02, timeout=20)
        assert child.freeze() is True
        assert child._tree.events()["frozen"].strip() == "1"  # type: ignore[union-attr]
        assert stat_fields(child.pid)[0] in "ST"  # frozen tasks sleep
        child.thaw()
        assert wait_until(lambda: child._tree.events()["frozen"].strip() == "0", timeout=5)  # type: ignore[union-attr]
        user, system = child.tree_cpu_times()
        assert user > 0 and system >= 0
    finally:
        child.kill_tree()
        child.wait()


@pytest.mark.timeout(60)
@needs_cgroups
def test_a_ctrl_c_in_kill_tree_leaves_the_tree_thawed_and_no_fd(sel: Context) -> None:
    """kill_tree(sig) freezes the tree while it signals each member. A Ctrl-C once the
    freeze began left it frozen for good (and a later kill_tree took that for the
    user's freeze); one right after an open leaked the fd (the leak check counts)."""
    rng = random.Random(3)
    child = sel.spawn(["sh", "-c", "trap '' WINCH; sleep 60 & sleep 60 & wait"], kill_tree=True)
    tree: Any = child._tree

    def frozen_after_an_interrupted_kill_tree() -> str:
        timer = threading.Timer(rng.uniform(0, 0.003), os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()  # (its SIGINT may come before start() returns)
            while True:
                child.kill_tree(signal.SIGWINCH)
        except KeyboardInterrupt:
            pass
        timer.join()
        return str(tree.events()["frozen"].strip())

    try:
        with default_sigint():
            states = [frozen_after_an_interrupted_kill_tree() for _ in range(100)]
        assert set(states) == {"0"}, states.count("1")
    finally:
        child.kill_tree()
        child.wait()


@pytest.mark.timeout(30)
@needs_cgroups
def test_a_tree_removed_while_kill_tree_signals_it_is_no_error() -> None:
    """kill_tree(sig) freezes the tree, signals each member, thaws. If the tree empties
    meanwhile (its last process ends; another thread's kill_tree()), the dispatch
    thread removes its cgroup: the thaw, on the fd opened at the freeze, then gets
    ENODEV, which came out of kill_tree() (and stop()) as a bare OSError."""
    with Context(mode=SigchldOwner.PIDFD) as ctx:
        ctx.start_dispatch_thread()
        child = ctx.spawn(["sleep", "30"], kill_tree=True)
        tree: Any = child._tree
        members = tree.pids

        def members_then_removed() -> list[int]:
            found = members()
            tree.kill()  # (another thread's kill_tree(), say)
            assert wait_until(lambda: tree.removed, timeout=5)  # (the dispatch thread's settle)
            return list(found)

        tree.pids = members_then_removed
        child.kill_tree(signal.SIGTERM)
        assert child.wait(10) is not None and tree.wait_empty(0)


@pytest.mark.timeout(30)
@needs_cgroups
def test_a_first_tree_while_out_of_fds_does_not_give_up_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first look for this process's cgroup home, made while the process was out of
    fds, found "no cgroup2" and kept that answer: every later kill_tree=True child was a
    process group, and the doctor said cgroups were not mounted. Now that look answers
    for itself only, and says why."""
    monkeypatch.setattr(_cgroup, "_homes", {})  # (as a process that made no tree yet)
    with fd_room(0):
        assert _cgroup.home() is None
        assert "out of fds" in (_cgroup.why_not() or "")
    assert _cgroup.home() is not None
    assert _cgroup.why_not() is None


@pytest.mark.timeout(30)
def test_freeze_needs_a_cgroup(sel: Context) -> None:
    child = sel.spawn(["sleep", "30"], kill_tree="process-group")
    try:
        with pytest.raises(StateError, match="needs a cgroup tree"):
            child.freeze()
        with pytest.raises(StateError, match="needs a cgroup tree"):
            child.tree_cpu_times()
    finally:
        child.kill_tree()
        child.wait()


@pytest.mark.timeout(30)
@needs_cgroups
def test_a_cgroup_tree_signals_other_than_sigkill_reach_every_member(sel: Context, tmp_path: Path) -> None:
    report = tmp_path / "pids"
    child = sel.spawn(["sh", "-c", f'setsid sleep 60 & echo $! >> "{report}"; sleep 60'], kill_tree=True)
    (escapee,) = _pids_of(report, 1)
    child.kill_tree(signal.SIGTERM)
    event = child.wait(10)
    assert event is not None and event.returncode == -signal.SIGTERM
    assert wait_until(lambda: not alive(escapee), timeout=5)


# -- stop --------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_stop_terminates_within_grace(ctx: Context) -> None:
    child = ctx.spawn(["sleep", "30"])
    t0 = time.monotonic()
    event = child.stop(grace=5)
    assert event is not None and event.returncode == -signal.SIGTERM
    assert time.monotonic() - t0 < 2
    assert child.stop() is event  # stopped already: the same exit


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
def test_stop_kills_a_tree_that_ignores_the_signal(ctx: Context, tmp_path: Path, kind: str) -> None:
    report = tmp_path / "pids"
    calls: list[int] = []
    script = f"trap '' TERM; sh -c \"trap '' TERM; sleep 60\" & echo $! >> \"{report}\"; sleep 60; wait"
    child = ctx.spawn(["sh", "-c", script], lambda c, e: calls.append(e.pid), kill_tree=kind)
    (grandchild,) = _pids_of(report, 1)
    t0 = time.monotonic()
    event = child.stop(grace=0.3)
    assert event is not None and event.returncode == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - t0 < 5
    assert wait_until(lambda: not alive(grandchild), timeout=5)
    assert calls == [child.pid]  # the callback ran once


@pytest.mark.timeout(30)
@needs_cgroups
def test_stop_waits_for_the_tree_not_only_the_child(sel: Context, tmp_path: Path) -> None:
    """The child obeys SIGTERM at once; a descendant that ignores it is SIGKILLed
    when the grace runs out, and stop() returns once the tree is empty (it returned
    at the child's exit, with the descendant still dying)."""
    report = tmp_path / "pids"
    script = f'sh -c "trap \'\' TERM; sleep 60" & echo $! >> "{report}"; sleep 60'
    for _ in range(3):
        report.unlink(missing_ok=True)
        child = sel.spawn(["sh", "-c", script], kill_tree=True)
        (stubborn,) = _pids_of(report, 1)
        time.sleep(0.1)  # (its trap is set)
        event = child.stop(grace=0.5)
        assert event is not None and event.returncode == -signal.SIGTERM
        assert child._tree is not None and child._tree.wait_empty(0)
        assert wait_until(lambda: not alive(stubborn), timeout=5)  # noqa: B023


# -- cgroups left behind -------------------------------------------------------------
@pytest.mark.timeout(30)
@needs_cgroups
def test_leftovers_of_dead_owners_are_swept_at_first_use(tmp_path: Path) -> None:
    """A crashed owner's empty trees and directory go when another process starts
    using trees; a live owner's and a populated tree are left alone."""
    home = _cgroup.home()
    assert home is not None
    parent = os.path.dirname(home.dir)
    pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    dead = os.path.join(parent, f"childproc-{pidns}-999999999-1")  # no such pid
    os.makedirs(os.path.join(dead, "1"))
    os.mkdir(os.path.join(dead, "2"))
    alive = os.path.join(parent, f"childproc-{pidns}-1-{_cgroup._start_time(1)}")  # init: alive
    os.makedirs(os.path.join(alive, "1"), exist_ok=True)
    other_ns = os.path.join(parent, "childproc-1-999999999-1")
    os.makedirs(os.path.join(other_ns, "1"))
    try:
        _cgroup.sweep_dead_owners(parent, pidns)
        assert not os.path.exists(dead)
        assert os.path.exists(os.path.join(alive, "1")) and os.path.exists(os.path.join(other_ns, "1"))
    finally:
        for d in (os.path.join(alive, "1"), alive, os.path.join(other_ns, "1"), other_ns):
            if os.path.exists(d):
                os.rmdir(d)


# -- found by review: the windows around a tree's start and end -----------------------
@pytest.mark.timeout(30)
def test_a_group_is_not_signalled_after_an_interrupted_reap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt between a reap and its bookkeeping leaves the phase behind;
    signal_group() finishes the bookkeeping first and refuses, never killpg()ing a
    group id that may be free."""
    real = _reaping.Reaping._accept
    hits: list[int] = []

    def interrupted(self: object, *args: object, **kw: object) -> None:
        if not hits:
            hits.append(1)
            raise KeyboardInterrupt
        real(self, *args, **kw)  # type: ignore[arg-type]

    with Context(SigchldOwner.PIDFD) as c:
        child = c.spawn(["true"], process_group=0)
        monkeypatch.setattr(_reaping.Reaping, "_accept", interrupted)
        with pytest.raises(KeyboardInterrupt):
            while True:
                c.wait(1)
        assert hits and not os.path.exists(f"/proc/{child.pid}")  # reaped; the record is behind
        with pytest.raises(ChildExitedError):
            child.signal_group(signal.SIGTERM)
        assert child.wait(5) is not None and child.returncode == 0  # delivered once, all the same


@pytest.mark.timeout(30)
def test_forked_start_new_session_is_a_session_when_fork_returns(sel: Context) -> None:
    for _ in range(20):
        child = sel.fork(start_new_session=True)
        if child is None:
            time.sleep(30)
            os._exit(0)
        child.signal_group(signal.SIGTERM)  # at once: the group exists already
        event = child.wait(10)
        assert event is not None and event.returncode == -signal.SIGTERM


@pytest.mark.timeout(30)
@needs_cgroups
def test_a_forked_child_leaves_the_parents_trees_alone(sel: Context) -> None:
    """A forked child runs the parent's exit hooks (atexit): the home's cleanup is the
    parent's only."""
    home = _cgroup.home()
    assert home is not None
    child = sel.fork()
    if child is None:
        atexit._run_exitfuncs()  # what a forked child that exits normally runs
        os._exit(0)
    assert child.wait(10) is not None and child.returncode == 0
    assert os.path.isdir(home.dir)
    tree_child = sel.spawn(["true"], kill_tree="cgroup")
    assert tree_child.wait(10) is not None and tree_child.returncode == 0


@pytest.mark.timeout(30)
@needs_cgroups
def test_a_bad_argument_after_the_tree_was_planned_leaves_no_cgroup(sel: Context) -> None:
    home = _cgroup.home()
    assert home is not None
    with pytest.raises(childproc.ChildprocError):
        sel.spawn(["true"], kill_tree=True, stdin=object())
    with pytest.raises(childproc.ChildprocError):
        sel.spawn(["no-such-program-at-all"], kill_tree=True)
    assert home.trees_on_disk() == [] and not home.live


@pytest.mark.timeout(30)
@needs_cgroups
def test_cgroups_nested_in_a_tree_are_signalled_and_removed(sel: Context, tmp_path: Path) -> None:
    home = _cgroup.home()
    assert home is not None
    report = tmp_path / "termed"
    script = (
        f'cg="{home.mount}$(sed -n "s/^0:://p" /proc/self/cgroup)"; mkdir "$cg/inner"; '
        f'sh -c \'echo 0 > "$0/inner/cgroup.procs"; trap "echo TERM > {report}; exit 0" TERM; '
        'sleep 60 & wait\' "$cg" & sleep 60'
    )
    child = sel.spawn(["sh", "-c", script], kill_tree=True)
    tree = child._tree
    assert isinstance(tree, _cgroup.CgroupTree)
    assert wait_until(lambda: os.path.isdir(os.path.join(tree.path, "inner")) and len(tree.pids()) >= 3, 10)
    time.sleep(0.1)  # (its trap is set)
    child.kill_tree(signal.SIGTERM)
    assert wait_until(report.exists, timeout=5)  # the nested one got it too
    child.kill_tree()
    assert child.wait(10) is not None
    assert tree.wait_empty(5)
    sel.close()
    assert tree.removed and not os.path.exists(tree.path)


@pytest.mark.timeout(30)
@needs_cgroups
def test_stop_signals_descendants_left_after_the_child_exited(sel: Context, tmp_path: Path) -> None:
    report = tmp_path / "termed"
    script = f"sh -c 'trap \"echo TERM > {report}; exit 0\" TERM; sleep 60 & wait' &"
    child = sel.spawn(["sh", "-c", script], kill_tree=True)
    assert child.wait(10) is not None  # the child is gone, a descendant is not
    time.sleep(0.2)  # (its trap is set)
    t0 = time.monotonic()
    child.stop(grace=5)
    assert report.exists() and time.monotonic() - t0 < 3  # SIGTERM, not the grace then SIGKILL
    assert child._tree is not None and child._tree.wait_empty(5)


@pytest.mark.timeout(30)
def test_mainloop_refuses_a_process_group_tree() -> None:
    with Context(SigchldOwner.MAINLOOP) as c:
        with pytest.raises(StateError, match="MAINLOOP"):
            c.spawn(["true"], kill_tree="process-group")
        if CGROUPS:  # a cgroup tree needs no pid, and works
            child = c.spawn(["sh", "-c", "sleep 60 & wait"], kill_tree="cgroup")
            assert wait_until(lambda: len(child._tree.pids()) >= 2, timeout=5)  # type: ignore[union-attr]
            child.kill_tree()
            pid, status = os.waitpid(child.pid, 0)
            c.childproc_reaped(pid, status)
            assert child.returncode == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_a_cgroup_that_cannot_be_removed_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rmdir refused for processes still inside (EBUSY) is the normal "not yet" and
    says nothing; refused for anything else (here ENOTEMPTY: a plain directory with a
    file stands in for a cgroup childproc may not remove) is said once, with what to do."""
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    (stuck / "file").write_text("")
    for _ in range(3):
        assert _cgroup._remove_if_empty(str(stuck)) is False
    warnings = [r.getMessage() for r in caplog.records if r.name == "childproc"]
    assert len(warnings) == 1 and str(stuck) in warnings[0] and "by hand" in warnings[0], warnings
    _cgroup._unremovable.discard(str(stuck))
    (stuck / "file").unlink()
    assert _cgroup._remove_if_empty(str(stuck)) is True and not stuck.exists()
