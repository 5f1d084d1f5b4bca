"""Trees in cgroups (v2): a child and everything it starts, in a cgroup of its own.

Theory of operation
-------------------
A process cannot leave its cgroup by itself: whatever a child starts, by
``setsid()``, a double fork or a daemon's tricks, lands in the child's cgroup
and stays there. So a cgroup made for one child holds its whole tree, and
the kernel answers for it: writing ``1`` to ``cgroup.kill`` SIGKILLs every
process in it at once (no fork can outrun it), ``cgroup.events`` says when
it is empty (``populated 0``), ``cgroup.freeze`` stops and resumes all of
it, ``cpu.stat`` sums its CPU time. Exiting processes leave it as they die,
and a zombie is not listed, so its members are always live processes.

Where: under the cgroup this process lives in (the cgroup2 mount from
``/proc/self/mounts`` plus the ``0::`` line of ``/proc/self/cgroup``), one
directory per owning process, ``childproc-<pid namespace>-<pid>-<start
time>``, and in it one cgroup per tree, named by a counter. The owner's name
says whether it is still alive (the pid with the same start time), so a
process that makes trees removes, at its first use, the empty leftovers of
owners that died (a crashed caller leaves nothing for long); trees that still
hold processes are left alone: their processes are someone's.

Where the process may not make cgroups (no cgroup2, not delegated, no
``cgroup.kill`` before Linux 5.14), :func:`home` is None and the caller
falls back to a process group (:mod:`childproc._trees`).

Getting the child in before it can fork: ``posix_spawn`` has no way to start
a child in a given cgroup (``clone3``'s ``CLONE_INTO_CGROUP`` is not
reachable from Python), and a child moved after it started may already have
forked. So the spawned program is started through ``/bin/sh``, which writes
``0`` to the tree's ``cgroup.procs`` (moving itself) before it execs the
program; a shell does not fork for that. The parent also writes the child's
pid before ``spawn()`` returns, so that a tree killed at once is not empty.
A forked child moves itself before ``fork()`` returns there. Only here does
childproc touch cgroupfs.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import signal
import threading
import time

from ._fds import OUT_OF_FDS

__all__ = ["CgroupTree", "Home", "existing_home", "home", "why_not"]

_PREFIX = "childproc-"
_WAIT_STEP_S = 0.05  # cgroup.events notifies; this only bounds a missed notification
_FREEZE_FOR_SIGNAL_S = 0.2  # how long a signal waits for the tree to freeze (an event loop may be waiting)
_UNCLAIMED_S = 5.0  # a tree with no started child after this long was left by an interruption


_WRITE, _READ = os.O_WRONLY | os.O_CLOEXEC, os.O_RDONLY | os.O_CLOEXEC


def _removed(exc: OSError) -> bool:
    """Whether ``exc`` says the cgroup was removed (by another thread's settle, once
    empty): ENOENT opening one of its files, ENODEV using one opened before."""
    return exc.errno in (errno.ENOENT, errno.ENODEV)


def _write(path: str, data: bytes) -> None:
    fds: list[int] = []
    try:
        # The fd lands in ``fds`` from C: an interrupt cannot come between the open
        # and its record (and leak the fd).
        fds.extend(itertools.starmap(os.open, ((path, _WRITE),)))
        os.write(fds[0], data)
    finally:
        if fds:
            os.close(fds[0])


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _fields(path: str) -> dict[str, str]:
    """A flat-keyed cgroup file (``cgroup.events``, ``cpu.stat``) as a dict."""
    return dict(line.split(" ", 1) for line in _read(path).splitlines() if " " in line)


def _unescape(field: str) -> str:
    """A path field of /proc/self/mounts (spaces and the like are octal escapes)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of ``/proc/<pid>/stat``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError as exc:
        if exc.errno in OUT_OF_FDS:
            raise
        return None
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def _locate() -> tuple[str, str] | None:
    """(mount point of the cgroup2 hierarchy, this process's cgroup under it), or None."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            mounts = [line.split() for line in f]
        with open("/proc/self/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            own = next((line[3:].rstrip("\n") for line in f if line.startswith("0::")), None)
    except OSError as exc:
        if exc.errno in OUT_OF_FDS:
            raise
        return None
    mount = next((_unescape(m[1]) for m in mounts if len(m) > 2 and m[2] == "cgroup2"), None)
    if mount is None or own is None or own.endswith(" (deleted)"):
        return None
    return mount, own


class CgroupTree:
    """One child's tree: a cgroup of its own (see the module docstring)."""

    guarantee = "cgroup"

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        #: Where a process writes ``0`` to move itself in (the spawn trampoline's target).
        self.procs = os.path.join(path, "cgroup.procs")
        self._cgroup_line = ""  # "0::/..." as /proc/<pid>/cgroup shows a member (see signal())
        self._last_cpu: tuple[float, float] | None = None
        self.removed = False

    def add(self, pid: int) -> None:
        """Move ``pid`` in (the parent's half; the child moved itself already)."""
        _write(self.procs, b"%d" % pid)

    def pids(self) -> list[int]:
        """Every process in the tree, in nested cgroups too (a descendant may make
        its own: a job that itself uses childproc, a container runtime)."""
        out: list[int] = []
        for where, _, _ in os.walk(self.path):
            try:
                out += [int(p) for p in _read(os.path.join(where, "cgroup.procs")).split()]
            except FileNotFoundError:
                pass  # (removed meanwhile)
        return out

    def events(self) -> dict[str, str]:
        try:
            return _fields(self._file("cgroup.events"))
        except FileNotFoundError:
            return {"populated": "0", "frozen": "0"}

    def populated(self) -> bool:
        return self.events().get("populated", "0").strip() == "1"

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _control(self, name: str, value: bytes) -> bool:
        """Write a control file; False if the cgroup is gone (it was empty: nothing to do)."""
        if self.removed:
            return False
        try:
            _write(self._file(name), value)
        except OSError as exc:
            if not _removed(exc):
                raise
            return False  # removed meanwhile: it was empty
        return True

    def kill(self) -> None:
        """SIGKILL every process in the tree at once (``cgroup.kill``)."""
        self._control("cgroup.kill", b"1")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process in the tree: SIGKILL through ``cgroup.kill``;
        another signal to each member while the tree is frozen (nothing in it can
        fork or exit meanwhile), each through a pidfd checked to be a member (its
        ``/proc/<pid>/cgroup`` names this cgroup), so a pid that changed hands
        between reading the list and opening it is skipped."""
        if sig == signal.SIGKILL:
            self.kill()
            return
        if self.removed:
            return
        was_frozen = self.events().get("frozen", "0").strip() == "1"
        freezer: list[int] = []  # cgroup.freeze, open while this call has the tree frozen
        try:
            if not was_frozen:
                freezer.extend(itertools.starmap(os.open, ((self._file("cgroup.freeze"), _WRITE),)))
                os.write(freezer[0], b"1")
                # (A member in an uninterruptible sleep delays the freeze: signalled all the same.)
                self._wait_for("frozen", "1", _FREEZE_FOR_SIGNAL_S)
            for pid in self.pids():
                fds: list[int] = []
                try:
                    fds.extend(itertools.starmap(os.pidfd_open, ((pid,),)))  # (as in _write)
                    if self._is_member(_read(f"/proc/{pid}/cgroup")):
                        signal.pidfd_send_signal(fds[0], sig)
                except (ProcessLookupError, FileNotFoundError):
                    pass
                finally:
                    if fds:
                        os.close(fds[0])
        except OSError as exc:
            if not _removed(exc):
                raise
            return  # removed meanwhile: it was empty
        finally:
            if freezer:
                try:
                    # The thaw is one call on an fd open since the freeze: an interrupt
                    # (a Ctrl-C) cannot leave the tree frozen for good.
                    os.write(freezer[0], b"0")
                except OSError as exc:
                    if not _removed(exc):
                        raise
                finally:
                    os.close(freezer[0])

    def _is_member(self, proc_cgroup: str) -> bool:
        """Whether ``/proc/<pid>/cgroup``'s text puts the process in this tree (here
        or in a cgroup nested under it)."""
        line = self._cgroup_line
        return any(x == line or x.startswith(line + "/") for x in proc_cgroup.splitlines())

    def freeze(self, timeout: float = 5.0) -> bool:
        """Stop every process in the tree (``cgroup.freeze``); True once the kernel says
        the whole tree is frozen (a process in an uninterruptible sleep may delay
        that: False after ``timeout``)."""
        if not self._control("cgroup.freeze", b"1"):
            return True  # gone: nothing in it to run
        return self._wait_for("frozen", "1", timeout)

    def thaw(self) -> None:
        self._control("cgroup.freeze", b"0")

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every process that ran in the tree
        (``cpu.stat``); once the cgroup is removed, what it said last."""
        if self._last_cpu is not None and self.removed:
            return self._last_cpu
        try:
            stat = _fields(self._file("cpu.stat"))
        except FileNotFoundError:
            return self._last_cpu or (0.0, 0.0)
        self._last_cpu = int(stat["user_usec"]) / 1e6, int(stat["system_usec"]) / 1e6
        return self._last_cpu

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the last process to leave; True if it is empty."""
        return self._wait_for("populated", "0", timeout)

    def _wait_for(self, key: str, value: str, timeout: float) -> bool:
        """Wait until ``cgroup.events`` says ``key value`` (the kernel notifies each
        change as POLLPRI on the file; a short poll step bounds a missed one)."""
        deadline = time.monotonic() + timeout
        opened: list[int] = []
        try:
            opened.extend(itertools.starmap(os.open, ((self._file("cgroup.events"), _READ),)))  # (_write)
            fd = opened[0]
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            while True:
                text = os.pread(fd, 4096, 0).decode()
                if f"{key} {value}" in text.splitlines():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(min(left, _WAIT_STEP_S) * 1000)
        except OSError as exc:
            if not _removed(exc):
                raise
            return key == "populated"  # removed: it was empty
        finally:
            if opened:
                os.close(opened[0])

    def remove(self) -> bool:
        """Remove the cgroup if it is empty; True once it is gone."""
        if self.removed:
            return True
        try:
            self.cpu_times()  # (kept: the tree's CPU time outlives its cgroup)
            if not _remove_tree(self.path):
                return False
        except FileNotFoundError:
            pass
        self.removed = True
        return True


class Home:
    """This process's directory of trees; see the module docstring."""

    def __init__(self, mount: str, own: str, owner: str) -> None:
        self.mount = mount
        self.dir = os.path.join(mount + own, owner)
        self._own = own
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self.owner_pid = os.getpid()  # (a forked child inherits this object: not its to sweep)
        #: Trees whose child is gone but whose cgroup still held processes: removed
        #: when found empty (at the next tree, at a context's close, at exit).
        self.pending: dict[str, CgroupTree] = {}
        #: Trees whose child started (:meth:`claim`), or is starting (made less than
        #: ``_UNCLAIMED_S`` ago): a sweep leaves them alone.
        self.live: dict[str, CgroupTree] = {}
        self._made: dict[str, float] = {}

    def new_tree(self) -> CgroupTree:
        """A fresh, empty tree. Raises ``OSError`` if the cgroup cannot be made."""
        self.sweep_pending()
        with self._lock:
            name = str(next(self._names))
            path = os.path.join(self.dir, name)
            os.mkdir(path)
            tree = CgroupTree(path, name)
            tree._cgroup_line = f"0::{os.path.join(self._own, os.path.basename(self.dir), name)}"
            self._made[name] = time.monotonic()
        return tree

    def claim(self, tree: CgroupTree) -> None:
        """The tree's child started: the tree is live until :meth:`retire`."""
        with self._lock:
            self.live[tree.name] = tree
            self._made.pop(tree.name, None)

    def retire(self, tree: CgroupTree) -> bool:
        """The tree's child is gone: remove its cgroup now if empty, else later. True
        if it is gone now."""
        with self._lock:
            self.live.pop(tree.name, None)
            self._made.pop(tree.name, None)
            if tree.remove():
                self.pending.pop(tree.name, None)
                return True
            self.pending[tree.name] = tree
            return False

    def sweep_pending(self) -> None:
        """Remove the pending trees that are empty now, and any directory in this
        owner's home that no started child claims (an interruption, or an error,
        between its ``mkdir`` and its child). Only in the owning process."""
        if os.getpid() != self.owner_pid:
            return
        with self._lock:
            self._sweep_locked()

    def _sweep_locked(self) -> None:
        for name, tree in list(self.pending.items()):
            if tree.remove():
                del self.pending[name]
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        now = time.monotonic()
        for name in names:
            if not name.isdigit() or name in self.live or name in self.pending:
                continue
            if now - self._made.get(name, 0.0) >= _UNCLAIMED_S and _remove_tree(os.path.join(self.dir, name)):
                self._made.pop(name, None)

    def trees_on_disk(self) -> list[str]:
        """The trees' cgroups that exist now (names)."""
        try:
            return sorted(n for n in os.listdir(self.dir) if n.isdigit())
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """At exit: remove what is empty, and the owner's directory if nothing is left
        (only in the owning process: a forked child runs the parent's exit hooks too)."""
        if os.getpid() != self.owner_pid:
            return
        self.sweep_pending()
        with self._lock:
            if not self.live and not self.pending:
                _remove_if_empty(self.dir)


def _remove_if_empty(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        # EBUSY: processes still in it, the normal "not yet". Anything else will not
        # pass by waiting: say so, once per cgroup.
        if e.errno != errno.EBUSY and path not in _unremovable:
            _unremovable.add(path)
            logging.getLogger("childproc").warning(
                "childproc cannot remove the cgroup %s (%s); remove it by hand once it is empty",
                path,
                e.strerror or e,
            )
        return False
    return True


#: Cgroups that rmdir refused for another reason than processes in them (warned once).
_unremovable: set[str] = set()


def _remove_tree(path: str) -> bool:
    """Remove the cgroup at ``path`` and the empty cgroups nested in it, deepest
    first; False if something in it still holds processes."""
    return all(_remove_if_empty(where) for where, _, _ in os.walk(path, topdown=False))


def sweep_dead_owners(parent: str, pidns: str) -> None:
    """Remove the empty trees, and then the directories, of owners in ``parent``
    (of this pid namespace) that are no longer alive."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        parts = name[len(_PREFIX) :].split("-")
        if not name.startswith(_PREFIX) or len(parts) != 3 or parts[0] != pidns or not parts[1].isdigit():
            continue
        if _start_time(int(parts[1])) == parts[2]:
            continue  # alive (the same process: same pid, same start time)
        owner = os.path.join(parent, name)
        try:
            trees = os.listdir(owner)
        except OSError:
            continue
        for tree in trees:
            if tree.isdigit():
                _remove_tree(os.path.join(owner, tree))
        _remove_if_empty(owner)


_homes: dict[int, Home | None] = {}  # pid -> its home (a forked child finds its own)
_homes_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _homes_lock
    _homes_lock = threading.Lock()  # (another thread may have held it at the fork)


os.register_at_fork(after_in_child=_after_fork_in_child)


def why_not() -> str | None:
    """Why this process could not make trees in cgroups (None: it could), found
    without making anything (for the doctor)."""
    found = _homes.get(os.getpid(), False)
    if found is not False:
        return None if found else "this process tried, and could not make its cgroup directory"
    try:
        where = _locate()
    except OSError as exc:
        return f"this process is out of fds right now ({exc.strerror}): it could not look"
    if where is None:
        return "no cgroup2 hierarchy is mounted (or this process's cgroup is not in it)"
    parent = where[0] + where[1]
    if not os.access(parent, os.W_OK) or not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
        return f"this process may not create cgroups in {parent} or move processes there (not delegated)"
    kernel = os.uname().release
    release = tuple(int(x) for x in kernel.split("-")[0].split(".")[:2] if x.isdigit())
    if release < (5, 14):
        return f"Linux {kernel} has no cgroup.kill (5.14+)"
    return None


def existing_home() -> Home | None:
    """This process's home if it made one already (never makes one)."""
    found = _homes.get(os.getpid())
    return found if found else None


def home() -> Home | None:
    """This process's home for trees, made at the first call; None where this
    process may not make cgroups with ``cgroup.kill`` (then trees are process
    groups). The first call also sweeps dead owners' leftovers."""
    pid = os.getpid()
    found = _homes.get(pid, False)
    if found is not False:
        return found  # type: ignore[return-value]
    with _homes_lock:
        if pid not in _homes:
            try:
                made = _make_home(pid)
            except OSError as exc:
                if exc.errno not in OUT_OF_FDS:
                    raise
                return None  # (out of fds now: this tree is a process group; asked again later)
            _homes[pid] = made
        return _homes[pid]


def _make_home(pid: int) -> Home | None:
    where = _locate()
    start = _start_time(pid)
    if where is None or start is None:
        return None
    mount, own = where
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None
    parent = mount + own
    if not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
        return None  # moving a process between cgroups needs their common parent's procs writable
    sweep_dead_owners(parent, pidns)
    made = Home(mount, own, f"{_PREFIX}{pidns}-{pid}-{start}")
    try:
        os.mkdir(made.dir)
    except FileExistsError:
        pass
    except OSError:
        return None  # not ours to write (not delegated), read-only, ...
    if not os.path.exists(os.path.join(made.dir, "cgroup.kill")):  # Linux < 5.14
        _remove_if_empty(made.dir)
        return None
    import atexit  # noqa: PLC0415 - only a process that makes trees needs it

    atexit.register(made.close)
    return made
