"""``python -m childproc doctor`` tells the truth about this process."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from childproc import Context, Hooks, SigchldOwner, _cgroup, _sigchld
from childproc._doctor import format_report, report
from childproc._watchers import pidfd as pidfd_mod


def host_handler(signum: int, frame: object) -> None:
    pass


def test_cli_runs_in_a_fresh_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "childproc", "doctor"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "SIGCHLD disposition : SIG_DFL" in out.stdout
    assert "pidfds              : yes" in out.stdout
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "childproc", "doctor", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert data["pidfds"] is True and data["contexts"] == [] and data["wakeup_fd"] == "none"
    # What kill_tree=True gives here, found without making a cgroup (this machine: root, cgroup2).
    assert data["trees"] == {"kill_tree": "cgroup", "why": None}
    assert "kill_tree=True      : a cgroup per tree" in out.stdout


def test_reports_why_trees_fall_back_without_making_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where the process may not make cgroups, the doctor says kill_tree=True means a
    process group, and why (the places are faked: this machine runs as root)."""
    monkeypatch.setattr(_cgroup, "_homes", {})  # (this process's own home, if any, set aside)
    monkeypatch.setattr(_cgroup, "_locate", lambda: None)
    assert report()["trees"] == {"kill_tree": "process-group", "why": _cgroup.why_not()}
    assert "no cgroup2 hierarchy" in format_report(report())
    monkeypatch.setattr(_cgroup, "_locate", lambda: (str(tmp_path), "/"))  # no cgroup.procs there
    assert "not delegated" in report()["trees"]["why"]
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_reports_live_contexts_and_who_owns_sigchld() -> None:
    with Context(SigchldOwner.LIBXL) as a, Context(SigchldOwner.LIBXL) as b:
        a.setmode(Hooks(chldowner=SigchldOwner.LIBXL_ALWAYS))
        b.setmode(Hooks(chldowner=SigchldOwner.PIDFD))
        data = report()
        assert data["sigchld_owner"].startswith("childproc (1 context")
        modes = {(c["mode"], c["watcher"], c["uses_sigchld_handler"]) for c in data["contexts"]}
        assert modes == {("LIBXL_ALWAYS", "WAIT_ANY", True), ("PIDFD", "PIDFD", False)}
        text = format_report(data)
        assert "LIBXL_ALWAYS: watcher WAIT_ANY" in text and "PIDFD: watcher PIDFD" in text


def test_warns_about_the_known_traps(monkeypatch: pytest.MonkeyPatch) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert any("SIGCHLD is ignored" in w for w in report()["warnings"])
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, host_handler)
    try:
        data = report()
        assert data["sigchld_owner"] == "the host"
        assert any("foreign SIGCHLD handler" in w for w in data["warnings"])
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="host-worker")
    t.start()
    try:
        assert any("host-worker" in w and "fork server" in w for w in report()["warnings"])
    finally:
        stop.set()
        t.join()
    monkeypatch.setattr(pidfd_mod, "_supported", False)
    assert any("no pidfds" in w for w in report()["warnings"])


def test_wakeup_fd_is_seen_and_left_in_place() -> None:
    r, w = os.pipe2(os.O_NONBLOCK)
    old = signal.set_wakeup_fd(w)
    try:
        assert report()["wakeup_fd"].startswith(f"fd {w}")
        assert signal.set_wakeup_fd(w) == w  # still the host's
    finally:
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)


def test_sees_a_c_level_handler() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    act = _sigchld._SigAction()
    act.sa_handler = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert libc.sigaction(signal.SIGCHLD, ctypes.byref(act), None) == 0
    try:
        data = report()
        assert data["sigchld_owner"] == "the host (C code)"
        assert any("foreign SIGCHLD handler" in w for w in data["warnings"])
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
