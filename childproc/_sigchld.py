"""The process-wide SIGCHLD handler, as one object: who needs it, what it replaced.

Rules of this file
------------------
* There is one SIGCHLD disposition per process, so there is one childproc
  handler (:data:`HANDLER`), shared by every context that needs it (libxl's
  ``sigchld_users``). Each user is known by its waker; the handler pokes every
  user's waker (one non-blocking ``write`` each, errors ignored). It takes no
  lock, allocates nothing that matters and never reaps.
* ``signal.signal`` works only on the main thread. The handler is installed or
  restored there; a change wanted on another thread is remembered
  (:attr:`SigchldHandler.pending`) and carried out by the next childproc call
  on the main thread (:meth:`SigchldHandler.sync`).
* The prior disposition is saved when the first user arrives and put back when
  the last one leaves. Only ``SIG_DFL`` and ``SIG_IGN`` are accepted as prior
  dispositions, as in libxl: a handler someone else installed, in Python or in
  C, is never replaced (:class:`~childproc.SigchldConflictError`).
* The caller holds the process lock (``childproc._process.LOCK``) around every
  method that changes state; this file does not take it.
* The kernel's own view of SIGCHLD (``sigaction``) is read as well, so a
  handler installed by C code (libuv under uvloop) and an ``SA_NOCLDWAIT`` flag
  are seen: :func:`disposition`.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ._errors import HandlerReplacedError, SigchldConflictError
from ._traps import TRAPS

__all__ = ["HANDLER", "Disposition", "SigchldHandler", "disposition", "on_main_thread"]

log = logging.getLogger("childproc")

_raw_getsignal: Callable[[int], Any]
_raw_signal: Callable[[int, Any], Any]
try:  # what signal.getsignal/signal wrap, without their enum conversions
    from _signal import getsignal as _raw_getsignal  # type: ignore[import-not-found, no-redef, unused-ignore]
    from _signal import signal as _raw_signal  # type: ignore[import-not-found, no-redef, unused-ignore]
except ImportError:  # pragma: no cover - not CPython
    _raw_getsignal = signal.getsignal
    _raw_signal = signal.signal

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_SIGCHLD = int(signal.SIGCHLD)
#: On 3.10, calling a C function surfaces an exception pending on entry (see SigchldHandler._handle).
_any_c_call = id
SA_NOCLDWAIT = 2  # <asm-generic/signal-defs.h>; the same on every Linux architecture Python runs on


# -- the kernel's view -------------------------------------------------------------
# signal.getsignal() only knows handlers installed from Python. libuv (uvloop) and
# other C code install theirs with sigaction() directly, so SIGCHLD's real
# disposition is also read from the kernel: sigaction(SIGCHLD, NULL, &old).
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
_READABLE = _sigaction is not None and platform.system() == "Linux"


@dataclass(frozen=True)
class Disposition:
    """SIGCHLD's disposition, at the Python level and as the kernel has it."""

    #: What ``signal.getsignal(SIGCHLD)`` says (None: installed outside Python).
    python: object
    #: The C-level handler's address (0: SIG_DFL, 1: SIG_IGN), None if unreadable.
    address: int | None
    #: ``sa_flags`` (None if unreadable).
    flags: int | None

    @property
    def discards_statuses(self) -> str | None:
        """Why the kernel throws children's exit statuses away, or None: ``"SIG_IGN"``
        or ``"SA_NOCLDWAIT"``."""
        if self.address == 1 or (self.address is None and self.python == signal.SIG_IGN):
            return "SIG_IGN"
        if self.flags is not None and self.flags & SA_NOCLDWAIT:
            return "SA_NOCLDWAIT"
        return None

    @property
    def c_level_foreign(self) -> bool:
        """A handler C code installed behind Python's back (libuv's, say)."""
        return self.python in (signal.SIG_DFL, signal.SIG_IGN) and self.address not in (None, 0, 1)


def _read_kernel() -> tuple[int | None, int | None]:
    if not _READABLE:
        return None, None
    old = _SigAction()
    if _sigaction(_SIGCHLD, None, ctypes.byref(old)) != 0:
        return None, None
    return int(old.sa_handler or 0), int(old.sa_flags)


def disposition() -> Disposition:
    """SIGCHLD's disposition now (one ``sigaction`` call)."""
    address, flags = _read_kernel()
    return Disposition(_raw_getsignal(_SIGCHLD), address, flags)


_main_ident = threading.main_thread().ident


def on_main_thread() -> bool:
    """Whether the caller may use ``signal.signal`` (the interpreter's main thread)."""
    return threading.get_ident() == _main_ident


def describe(handler: object) -> str:
    """A handler, named for a person."""
    if handler is None or (handler in (signal.SIG_DFL, signal.SIG_IGN) and disposition().c_level_foreign):
        return "a handler installed outside Python (C code, e.g. libuv under uvloop)"
    if handler == signal.SIG_DFL:
        return "SIG_DFL (the default disposition)"
    if handler == signal.SIG_IGN:
        return "SIG_IGN"
    name = getattr(handler, "__qualname__", None) or repr(handler)
    module = getattr(handler, "__module__", None)
    return f"{module}.{name}" if module else name


def _conflict_message(current: _Handler) -> str:
    return TRAPS["foreign-handler"].error("childproc will not replace it", handler=describe(current))


_C_RECHECK_S = 0.1  # how often the C-level handler is read back (a ctypes call)


class SigchldHandler:
    """childproc's SIGCHLD handler and the bookkeeping of who uses it."""

    def __init__(self) -> None:
        self._users: dict[object, Callable[[], None]] = {}  # a user's key -> its waker's poke
        self._pokers: tuple[Callable[[], None], ...] = ()  # what the handler calls
        self.installed = False
        self.saved: _Handler = None  # the disposition before ours
        self.pending = False  # the installed state differs from what the users want
        self._trampoline: int | None = None  # CPython's C-level handler, learned at install
        self._checked_at = 0.0
        self._swapping = False  # between recording a swap and knowing it happened
        self._ignored: str | None = None  # what discards_statuses() last read from the kernel
        self._ignored_at = -1.0
        #: Run by the handler, on the main thread, when its last user left on another
        #: thread (``_process`` sets it: it takes the process lock, which is not here).
        self.restore_hook: Callable[[], None] | None = None

    # -- what the kernel calls ------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # CPython 3.10 may run this handler while another handler's exception is still
        # pending: os.stat() and os.fstat() run due handlers in the middle of building
        # their result (a big-int multiplication checks for signals) and carry on past
        # an exception one raised. A KeyboardInterrupt may then be pending on entry
        # here, and an attribute lookup that misses the type cache silently clears it.
        # So the first thing done is a C call, which on 3.10 surfaces a pending
        # exception as a SystemError caused by it; the wakers are poked (also when an
        # interrupt lands right after that call), then the cause goes on up as itself.
        # 3.11 and later never enter with one pending.
        pending = None
        try:
            try:
                _any_c_call(None)
            except SystemError as e:
                pending = e.__cause__
                if pending is None:  # pragma: no cover - not the case described
                    raise
        finally:
            # Iterates a tuple that is replaced, never mutated, so it needs no lock; a
            # poke never writes to a closed waker (see childproc._waker).
            for poke in self._pokers:
                poke()
        if pending is not None:
            try:
                raise pending
            finally:
                pending = None  # (no cycle through this frame)
        if self.pending and not self._users and self.restore_hook is not None:
            self.restore_hook()  # (the last user left on another thread: put the old one back)

    def restore_soon(self) -> None:
        """From another thread, after the last user left: have the main thread put the
        prior disposition back now (a SIGCHLD to it runs this handler), not at its next
        childproc call, which may never come (a host whose ``SIG_IGN`` reaped for it)."""
        main = _main_ident
        if self.pending and self.installed and not self._users and main is not None and not on_main_thread():
            signal.pthread_kill(main, _SIGCHLD)

    def is_ours(self, handler: object) -> bool:
        return handler == self._handle

    def discards_statuses(self, fresh: bool = False) -> str | None:
        """Whether SIGCHLD is ignored so that the kernel discards exit statuses:
        ``"SIG_IGN"``, ``"SA_NOCLDWAIT"`` or None. The Python level is read on every
        call, the kernel's view at most every 100 ms (every call with ``fresh``)."""
        current = _raw_getsignal(_SIGCHLD)
        if self.installed and self.is_ours(current):
            return None
        if current == signal.SIG_IGN:
            return "SIG_IGN"
        now = time.monotonic()
        if fresh or now - self._ignored_at >= _C_RECHECK_S:
            self._ignored_at = now
            address, flags = _read_kernel()
            self._ignored = (
                "SIG_IGN"
                if address == 1
                else "SA_NOCLDWAIT"
                if flags is not None and flags & SA_NOCLDWAIT
                else None
            )
        return self._ignored

    # -- users ----------------------------------------------------------------------
    def uses(self, key: object) -> bool:
        return key in self._users

    @property
    def user_count(self) -> int:
        return len(self._users)

    def set_user(self, key: object, poke: Callable[[], None], wanted: bool) -> None:
        """Add ``key`` (waking it with ``poke``) to the users, or remove it.

        Adding raises :class:`SigchldConflictError` when the handler would be
        installed over a foreign one; ``key`` is then not a user. Removing never raises.

        Interrupted, an add is undone (``key`` is not a user) and a removal is
        finished, by the ``except`` below; a removal that finds ``key`` gone already
        still finishes what an interruption of that ``except`` left (the pokers not
        rebuilt, the handler not put back).
        """
        if (key in self._users) == wanted:
            if wanted or (
                bool(self._users) == self.installed
                and len(self._pokers) == len(self._users)
                and not self._swapping
            ):
                return
        elif wanted and not on_main_thread():  # the install waits for the main thread: check now
            self._refuse_foreign()
        try:
            if wanted:
                self._users[key] = poke
            else:
                self._users.pop(key, None)
            self._pokers = tuple(self._users.values())
            self.sync(may_raise=wanted)
        except BaseException:
            self._users.pop(key, None)
            self._pokers = tuple(self._users.values())
            self.sync(may_raise=False)
            raise

    # -- installing -----------------------------------------------------------------
    def _foreign(self, current: _Handler) -> bool:
        if self.is_ours(current):
            return False
        return current not in (signal.SIG_DFL, signal.SIG_IGN) or disposition().c_level_foreign

    def _refuse_foreign(self) -> None:
        if not self.installed:
            current = _raw_getsignal(_SIGCHLD)
            if self._foreign(current):
                raise SigchldConflictError(_conflict_message(current), self._culprit(current))

    def _culprit(self, current: _Handler) -> object:
        """What to put in an error's ``handler`` attribute: the foreign handler, or,
        for one installed by C code, a string naming its address."""
        address = disposition().address
        if current is None or self.is_ours(current) or current in (signal.SIG_DFL, signal.SIG_IGN):
            return f"C-level handler at {address:#x}" if address not in (None, 0, 1) else current
        return current

    def _install(self) -> None:
        current = _raw_getsignal(_SIGCHLD)
        if self.is_ours(current):  # installed, then interrupted before it was recorded
            self.installed = True
            return
        if self._foreign(current):
            raise SigchldConflictError(_conflict_message(current), self._culprit(current))
        # Record first: an interruption after the swap leaves a state the next
        # sync recognises (_repair: ours in place, saved known).
        self.saved = current
        self._swapping = True
        _raw_signal(_SIGCHLD, self._handle)
        self.installed = True
        self._checked_at = 0.0
        self._swapping = False
        if self._trampoline is None:  # CPython's C-level handler: one address for the process
            self._trampoline = disposition().address  # (interrupted: learnt at the next install)

    def replaced(self) -> bool:
        """childproc's handler is installed and someone replaced it since (at the
        Python level, or from C), read now."""
        if not self.installed:
            return False
        if not self.is_ours(_raw_getsignal(_SIGCHLD)):
            return True
        address = disposition().address  # (read now, apart from the handler's own 100 ms cache)
        return not (address is None or self._trampoline is None or address == self._trampoline)

    def _in_place(self, current: _Handler, force: bool = False) -> bool:
        """Ours is SIGCHLD's handler at the Python level (every call) and the C level
        (read back at most every 100 ms, or when ``force``)."""
        if not self.is_ours(current):
            return False
        now = time.monotonic()
        if not force and now - self._checked_at < _C_RECHECK_S:
            return True
        self._checked_at = now
        address = disposition().address
        return address is None or self._trampoline is None or address == self._trampoline

    def _restore(self) -> None:
        current = _raw_getsignal(_SIGCHLD)
        if self._in_place(current, force=True):
            saved = self.saved if self.saved is not None else signal.SIG_DFL
            self._swapping = True
            # _signal.signal takes SIG_DFL/SIG_IGN as plain ints only.
            _raw_signal(_SIGCHLD, int(saved) if isinstance(saved, int) else saved)
            self._swapping = False
        else:
            log.warning(
                "SIGCHLD handler was replaced by %s while childproc was using it; leaving it in place",
                describe(current),
            )
        self.installed = False
        self.saved = None

    def _repair(self) -> None:
        """Finish the bookkeeping of a swap an exception interrupted right after it."""
        if self._swapping:
            ours = self.is_ours(_raw_getsignal(_SIGCHLD))
            if ours and not self.installed:  # installed
                self.installed = True
                self._checked_at = 0.0
            elif not ours and self.installed:  # restored
                self.installed = False
                self.saved = None
            self._swapping = False

    def sync(self, may_raise: bool) -> None:
        """Make the installed state match the users (main thread), or remember to.

        An install that meets a foreign handler raises only if ``may_raise``;
        otherwise it stays pending, and the users hear of the conflict from
        :meth:`check` on each of their calls.
        """
        self._repair()
        want = bool(self._users)
        if want == self.installed:
            self.pending = False
            return
        if not on_main_thread():
            self.pending = True
            return
        if not want:
            self._restore()
            self.pending = False
            return
        try:
            self._install()
        except SigchldConflictError:
            self.pending = True
            if may_raise:
                raise
            return
        self.pending = False

    def check(self) -> None:
        """For a user: raise if the handler is not in place.

        * Replaced behind childproc's back: :class:`HandlerReplacedError`. The state
          is reset to "not installed, wanted", so childproc never silently
          re-installs over whoever replaced it.
        * Wanted but blocked by a foreign handler: :class:`SigchldConflictError`, on
          every call until the foreign handler goes.
        * Wanted but waiting for the main thread: fine (pidfds and peek threads
          cover the gap).
        """
        self._repair()
        current = _raw_getsignal(_SIGCHLD)
        if self.installed:
            if self._in_place(current):
                return
            self.installed = False
            self.saved = None
            self.pending = bool(self._users)
            who = describe(None) if self.is_ours(current) else describe(current)
            raise HandlerReplacedError(
                TRAPS["handler-replaced"].error("it had children to watch", handler=who),
                self._culprit(current),
            )
        if self.pending and self._foreign(current):
            raise SigchldConflictError(_conflict_message(current), self._culprit(current))
        if self.pending and on_main_thread():
            self.sync(may_raise=True)

    def reset_after_fork(self) -> None:
        """In a forked child: put the prior disposition back, forget every user."""
        global _main_ident
        # After os.fork(), threading's own at-fork hook (registered before ours) made
        # the forking thread the main one; after a fork that ran no hooks, CPython's
        # view of the main thread is unchanged, and so is threading's: follow it.
        _main_ident = threading.main_thread().ident
        if self.installed and self.is_ours(signal.getsignal(signal.SIGCHLD)):
            try:
                signal.signal(signal.SIGCHLD, self.saved if self.saved is not None else signal.SIG_DFL)
            except ValueError:  # pragma: no cover - not the main thread of the child
                pass
        self._users = {}
        self._pokers = ()
        self.installed = False
        self.saved = None
        self.pending = False
        self._swapping = False


#: The process's one handler.
HANDLER = SigchldHandler()
