"""Everything that is process-wide: the SIGCHLD handler, who needs it, who made each pid.

Rules of this file
------------------
* There is one SIGCHLD disposition per process, so there is one childproc
  handler, shared by every context that needs it (libxl's ``sigchld_users``).
  The handler only pokes each user's self-pipe: one non-blocking ``write`` of
  one byte each, errors ignored. It takes no lock, allocates nothing that
  matters and never reaps.
* ``signal.signal`` works only on the main thread. The handler is installed or
  restored there; a change wanted on another thread is remembered and carried
  out by the next childproc call on the main thread (:func:`run_chores`).
* The prior disposition is saved when the first user arrives and put back when
  the last one leaves. Only ``SIG_DFL`` and ``SIG_IGN`` are accepted as prior
  dispositions, as in libxl: a Python handler someone else installed is never
  replaced (:class:`~childproc.SigchldConflictError`).
* :data:`LOCK` guards this module's tables *and* every context's ledger, so a
  pid cannot be reaped between ``fork()`` and its registration. It is never
  held while user code runs, except ``fork_replacement`` (which must not call
  back into childproc). Every public entry point calls :func:`refuse_reentry`
  before it takes the lock, so a call from a signal handler that interrupted
  childproc, or from ``fork_replacement``, raises instead of deadlocking or
  working on half-changed tables.
* After ``fork()`` the child starts clean: the handler is put back, every
  inherited context is disabled and its fds closed, the tables are emptied.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._errors import HandlerReplacedError, SigchldConflictError, StateError

if TYPE_CHECKING:
    from ._context import Context

__all__ = [
    "LOCK",
    "OWNERS",
    "postfork_child_noexec",
    "run_chores",
    "set_handler_user",
    "check_handler",
    "handler_installed",
    "on_main_thread",
    "snapshot",
]

log = logging.getLogger("childproc")

_raw_getsignal: Callable[[int], Any]
_raw_signal: Callable[[int, Any], Any]
try:  # what signal.getsignal/signal wrap, without their enum conversions (a hot path)
    from _signal import getsignal as _raw_getsignal  # type: ignore[import-not-found, no-redef, unused-ignore]
    from _signal import signal as _raw_signal  # type: ignore[import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - not CPython
    _raw_getsignal = signal.getsignal
    _raw_signal = signal.signal

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


#: Guards the tables below and every context's ledger. A C-level re-entrant lock,
#: so that ``with LOCK`` runs no Python code (it is taken several times on every
#: child's path) and the thread holding it can be asked for; it is never actually
#: taken twice, because :func:`refuse_reentry` comes first at every entry point.
LOCK = threading.RLock()
_held_here = LOCK._is_owned  # type: ignore[attr-defined]


def reentry_error() -> StateError:
    return StateError(
        "childproc was re-entered while busy on this thread: do not call it from a "
        "signal handler (report from your main loop, e.g. through a self-pipe) or "
        "from fork_replacement"
    )


def refuse_reentry() -> None:
    """Raise :class:`StateError` if this thread already holds :data:`LOCK`: it is
    a signal handler that interrupted childproc, or ``fork_replacement`` calling
    back. Call before taking the lock at every public entry point."""
    if _held_here():
        raise reentry_error()


#: pid -> the context that made it (every context, every mode).
OWNERS: dict[int, Context] = {}

_users: frozenset[Context] = frozenset()  # contexts that need the handler
_pokers: tuple[Callable[[], None], ...] = ()  # what the handler calls: their wakers' poke
_installed = False
_saved: _Handler = None  # disposition before ours
_pending = False  # the handler's state differs from what _users wants
_contexts: weakref.WeakSet[Context] = weakref.WeakSet()
_state_pid = os.getpid()


def _sigchld_handler(signum: int, frame: FrameType | None) -> None:
    # Only pokes self-pipes. Iterates a tuple that is replaced, never mutated,
    # so it needs no lock; each poke holds a reference to its waker, whose fd
    # therefore cannot be closed under it.
    for poke in _pokers:
        poke()


# -- the real (C-level) disposition --------------------------------------------------
# signal.getsignal() only knows handlers installed from Python. libuv (uvloop) and
# other C code install theirs with sigaction() directly, so childproc also reads the
# kernel's view, read-only: sigaction(SIGCHLD, NULL, &old). Where ctypes or the
# struct layout is unavailable, only the Python-level check remains.
class _SigAction(ctypes.Structure):
    # glibc's struct sigaction on Linux (x86_64, aarch64): handler, 1024-bit mask,
    # flags, restorer.
    _fields_ = (
        ("sa_handler", ctypes.c_void_p),
        ("sa_mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))),
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    )


_sigaction: Any
try:
    _sigaction = ctypes.CDLL(None, use_errno=True).sigaction
except (OSError, AttributeError):  # pragma: no cover - not glibc-like
    _sigaction = None

_trampoline: int | None = None  # CPython's C-level handler, learned when ours goes in
_READABLE = _sigaction is not None and platform.system() == "Linux"  # the struct layout above
_SIGCHLD = int(signal.SIGCHLD)


def real_handler() -> int | None:
    """The address of SIGCHLD's C-level handler (0: SIG_DFL, 1: SIG_IGN), or None if unknown."""
    if not _READABLE:
        return None
    old = _SigAction()
    if _sigaction(_SIGCHLD, None, ctypes.byref(old)) != 0:
        return None
    return int(old.sa_handler or 0)


def _c_level_foreign(python_level: _Handler) -> bool:
    """A handler that C code installed behind Python's back (libuv's, say)."""
    real = real_handler()
    if real is None:
        return False
    if python_level in (signal.SIG_DFL, signal.SIG_IGN):
        return real not in (0, 1)
    return False


def _getsignal() -> _Handler:
    """SIGCHLD's Python-level handler. ``_signal.getsignal`` is what ``signal.getsignal``
    wraps; it skips the enum conversion (SIG_DFL/SIG_IGN compare equal either way)."""
    return _raw_getsignal(_SIGCHLD)  # type: ignore[no-any-return]


_main_ident = threading.main_thread().ident  # the forking thread's, in a forked child


def on_main_thread() -> bool:
    """Whether the caller may use ``signal.signal`` (the interpreter's main thread)."""
    return threading.get_ident() == _main_ident


def handler_installed() -> bool:
    return _installed


def _describe(handler: _Handler) -> str:
    if handler is None or (handler in (signal.SIG_DFL, signal.SIG_IGN) and _c_level_foreign(handler)):
        return "a handler installed outside Python (C code, e.g. libuv under uvloop)"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    module = getattr(handler, "__module__", None)
    return f"{module}.{name}" if module else name


def _culprit(current: _Handler) -> object:
    """What to put in an error's ``handler`` attribute: the foreign handler, or, for
    one installed by C code, a string naming its address."""
    real = real_handler()
    if current is None or current is _sigchld_handler or current in (signal.SIG_DFL, signal.SIG_IGN):
        return f"C-level handler at {real:#x}" if real not in (None, 0, 1) else current
    return current


def _conflict_message(current: _Handler) -> str:
    return (
        f"SIGCHLD already has a handler: {_describe(current)}. childproc will not replace "
        "it. If the host reaps children itself, use SigchldOwner.MAINLOOP and report each "
        "reaped pid with ctx.childproc_reaped(pid, status) (or call ctx.sigchld_occurred()); "
        "otherwise remove that handler before using childproc."
    )


def _foreign(current: _Handler) -> bool:
    if current is _sigchld_handler:
        return False
    return current not in (signal.SIG_DFL, signal.SIG_IGN) or _c_level_foreign(current)


def check_can_install() -> None:
    """Raise :class:`SigchldConflictError` now if installing would meet a foreign handler.

    Callable from any thread (``signal.getsignal`` is), so a worker thread learns
    of the conflict before it forks, not at the next main-thread call.
    """
    if not _installed:
        current = _getsignal()
        if _foreign(current):
            raise SigchldConflictError(_conflict_message(current), _culprit(current))


def _install() -> None:
    global _installed, _saved, _trampoline
    current = _getsignal()
    if _foreign(current):
        raise SigchldConflictError(_conflict_message(current), _culprit(current))
    _raw_signal(_SIGCHLD, _sigchld_handler)
    if _trampoline is None:  # CPython's C-level handler: one address for the process
        _trampoline = real_handler()
    global _c_checked_at
    _c_checked_at = 0.0  # the next check reads the C level again
    _saved = current if current is not _sigchld_handler else signal.SIG_DFL
    _installed = True


_C_RECHECK_S = 0.1  # how often the C-level handler is read back (a ctypes call)
_c_checked_at = 0.0
_monotonic = time.monotonic


def _ours_in_place(current: _Handler, force: bool = False) -> bool:
    """childproc's handler is SIGCHLD's handler, at the Python level (every call)
    and the C level (read back at most every 100 ms, or when ``force``)."""
    global _c_checked_at
    if current is not _sigchld_handler:
        return False
    now = _monotonic()
    if not force and now - _c_checked_at < _C_RECHECK_S:
        return True
    _c_checked_at = now
    real = real_handler()
    return real is None or _trampoline is None or real == _trampoline


def _restore() -> None:
    global _installed, _saved
    current = _getsignal()
    if _ours_in_place(current, force=True):
        # _signal.signal takes SIG_DFL/SIG_IGN as plain ints only, not signal.Handlers.
        saved = _saved if _saved is not None else signal.SIG_DFL
        _raw_signal(_SIGCHLD, int(saved) if isinstance(saved, int) else saved)
    else:
        log.warning(
            "SIGCHLD handler was replaced by %s while childproc was using it; leaving it in place",
            _describe(current),
        )
    _installed = False
    _saved = None


def _sync_locked(may_raise: bool) -> None:
    """Make the handler's state match ``_users`` (main thread), or remember to.

    An install that meets a foreign handler raises only if ``may_raise``; otherwise
    it stays pending, and the contexts that need the handler hear of the conflict
    from :func:`check_handler` on each of their calls.
    """
    global _pending
    want = bool(_users)
    if want == _installed:
        _pending = False
        return
    if not on_main_thread():
        _pending = True
        return
    if not want:
        _restore()
        _pending = False
        return
    try:
        _install()
    except SigchldConflictError:
        _pending = True
        if may_raise:
            raise
        return
    _pending = False


def set_handler_user(ctx: Context, wanted: bool) -> None:
    """Add ``ctx`` to, or remove it from, the handler's users. Call with LOCK held.

    Adding raises :class:`SigchldConflictError` when the handler would be
    installed over a foreign one; ``ctx`` is then not a user. Removing never raises.
    """
    global _users, _pokers
    if (ctx in _users) == wanted:
        return
    if wanted:
        if not on_main_thread():  # the install waits for the main thread: check now
            check_can_install()
        _users = _users | {ctx}
    else:
        _users = _users - {ctx}
    _pokers = tuple(c._waker.poke for c in _users)
    try:
        _sync_locked(may_raise=wanted)
    except BaseException:
        _users = _users - {ctx}
        _pokers = tuple(c._waker.poke for c in _users)
        _sync_locked(may_raise=False)
        raise


def run_chores() -> None:
    """Carry out a handler change that a worker thread could not. Cheap when idle; never raises."""
    if _pending and on_main_thread():
        with LOCK:
            _sync_locked(may_raise=False)


def check_handler() -> None:
    """For a context that needs the handler: raise if it is not in place. LOCK held.

    * Replaced behind childproc's back: :class:`HandlerReplacedError`. The state
      is reset to "not installed, wanted", so childproc never silently
      re-installs over whoever replaced it.
    * Wanted but blocked by a foreign handler: :class:`SigchldConflictError`, on
      every call until the foreign handler goes (then the next main-thread call
      installs childproc's).
    * Wanted but waiting for the main thread: fine (pidfds and peek threads
      cover the gap).
    """
    global _installed, _saved, _pending
    current = _raw_getsignal(_SIGCHLD)
    if _installed:
        # (_ours_in_place's fast path inline: this runs several times per child)
        if current is _sigchld_handler and _monotonic() - _c_checked_at < _C_RECHECK_S:
            return
        if _ours_in_place(current):
            return
        _installed = False
        _saved = None
        _pending = bool(_users)
        who = _describe(None) if current is _sigchld_handler else _describe(current)
        raise HandlerReplacedError(
            f"childproc's SIGCHLD handler was replaced by {who} while childproc "
            "had children to watch; their deaths would go unseen. Whoever installed it owns "
            "SIGCHLD now: switch childproc to SigchldOwner.MAINLOOP and report reaped pids with "
            "ctx.childproc_reaped(), or remove that handler.",
            _culprit(current),
        )
    if _pending and _foreign(current):
        raise SigchldConflictError(_conflict_message(current), _culprit(current))
    if _pending and on_main_thread():
        _sync_locked(may_raise=True)


def foreign_children() -> list[int]:
    """Children of this process that no childproc context made. LOCK held.

    One ``waitid`` when there are no children at all (the common case); only
    otherwise are the ``/proc/self/task/*/children`` lists read.
    """
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return []
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # pragma: no cover - no /proc: cannot tell
        return []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return sorted(p for p in set(pids) if p not in OWNERS)


def register_context(ctx: Context) -> None:
    _contexts.add(ctx)


def snapshot() -> dict[str, object]:
    """The process-wide state, for diagnostics and tests."""
    return {
        "handler_installed": _installed,
        "saved_disposition": _saved,
        "pending_main_thread_change": _pending,
        "handler_users": len(_users),
        "owned_pids": len(OWNERS),
        "live_contexts": len(_contexts),
    }


def postfork_child_noexec() -> None:
    """Make a forked child clean: handler restored, inherited contexts disabled.

    Runs automatically after ``os.fork()`` (``os.register_at_fork``). Call it
    yourself after a fork childproc could not see (a C extension's ``fork()``)
    if the child goes on running Python without ``exec``. Idempotent.
    """
    global _users, _pokers, _installed, _saved, _pending, _state_pid, _main_ident
    if _state_pid == os.getpid():
        return
    # After os.fork(), threading's own at-fork hook (registered before ours) made the
    # forking thread the main one; after a fork that ran no hooks, CPython's view
    # of the main thread is unchanged, and so is threading's: follow it either way.
    _main_ident = threading.main_thread().ident
    _state_pid = os.getpid()
    if not _held_here():
        # Another thread of the parent held it at fork time: that thread does not
        # exist here, so nobody would ever release it. (Held here: the fork ran
        # under it, as child_fork's does, and the forking thread releases it.)
        LOCK._at_fork_reinit()  # type: ignore[attr-defined]
    if _installed and signal.getsignal(signal.SIGCHLD) is _sigchld_handler:
        try:
            signal.signal(signal.SIGCHLD, _saved if _saved is not None else signal.SIG_DFL)
        except ValueError:  # pragma: no cover - not the main thread of the child
            pass
    for ctx in list(_contexts):
        ctx._abandon_after_fork()
    _contexts.clear()
    OWNERS.clear()
    _users = frozenset()
    _pokers = ()
    _installed = False
    _saved = None
    _pending = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=postfork_child_noexec)
