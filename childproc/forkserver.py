"""A fork server in the libforks style: fork early, before threads and before the heap grows.

:meth:`ForkServer.start` forks a small copy of the process *now* (call it early,
while the process is single-threaded and small). Later, from any thread, the
process asks the server to fork on its behalf: the child is a copy of the
process as it was at ``start()``, so forking costs the same whatever the
caller's size, and no thread of the caller's is ever in a forked child.
:meth:`ForkServer.start_fresh` starts the server as a fresh interpreter
instead, whose children are cheaper still but run only importable entries.

What libforks does, in Python (and what it gets wrong, done right):

* ``start`` / :attr:`ForkServer.pid` / :meth:`~ForkServer.fork` (entry point,
  optional socket pair to the child, optional exit fd) / :meth:`~ForkServer.spawn`
  (exec a program) / :meth:`~ForkServer.kill_all` / :meth:`~ForkServer.stop` /
  :meth:`~ForkServer.stop_server_only` / :meth:`~ForkServer.eval`.
* Every request carries an id and replies are matched by id, so many threads
  may share one server without ever getting each other's replies.
* The server reaps its children in its own loop (not in a signal handler) and
  writes each exit to that child's own non-blocking pipe: a burst of exits
  never blocks it.
* Errors are exceptions in the caller (:class:`ForkServerError`); the server
  never aborts. A server that died is reported by every pending and later
  call (:class:`ForkServerDied`).
* The server watches the starting process (a pidfd): when it dies, the server
  SIGTERMs its children and exits (or leaves them, ``on_parent_death="keep"``).
* Reachable only through inherited socketpairs: no path, no abstract socket.
* Requests are JSON (never pickle) in bounded packets; a malformed, truncated
  or oversized request, or one carrying unexpected fds, gets an error reply
  and the server serves on.

Protocol: one ``SOCK_SEQPACKET`` packet per message, a JSON object, with fds
as ``SCM_RIGHTS`` (``socket.send_fds``/``recv_fds``). Exit fds carry one
``struct "=ii"`` record: (pid, wait status).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import ChildprocError, InvalidArgumentError
from ._spawn import Argv, spawn_process
from ._status import ChildEvent

__all__ = ["EXIT_EVENT", "ForkServer", "ForkServerDied", "ForkServerError", "ServedChild", "read_exit_event"]

MAX_PACKET = 64 * 1024  # largest request or reply
MAX_FDS = 16  # most fds one request may carry
#: One exit record on an exit fd: (pid, wait status).
EXIT_EVENT = struct.Struct("=ii")


class ForkServerError(ChildprocError):
    """The fork server refused or failed a request; the message says why."""

    def __init__(self, message: str, code: str = "ERROR", err: int | None = None) -> None:
        super().__init__(message)
        #: A short code, as libforks's result names: ``TOO_MANY_CLIENTS``, ``FORK_ERROR``, ...
        self.code = code
        #: The errno behind it, where there is one.
        self.errno = err


class ForkServerDied(ForkServerError):
    """The fork server is gone (killed, or stopped): this and every later call fail."""


def read_exit_event(fd: int) -> ChildEvent | None:
    """Read the exit record from an exit fd; None if it is not there yet (non-blocking fd)."""
    try:
        data = os.read(fd, EXIT_EVENT.size)
    except BlockingIOError:
        return None
    if len(data) != EXIT_EVENT.size:
        raise ForkServerDied(
            "exit fd closed without an exit record: the fork server stopped (stop_server_only) "
            "or died before this child exited, so nobody can report its status"
        )
    pid, status = EXIT_EVENT.unpack(data)
    return ChildEvent.from_wait_status(pid, status)


@dataclass
class ServedChild:
    """A child the fork server made for us."""

    pid: int
    #: Our end of the socket pair to the child (``socket=True``), else None.
    socket: socket.socket | None = None
    #: Readable when the child exits: one ``EXIT_EVENT`` record (``exit_fd=True``), else None.
    exit_fd: int | None = None
    #: A pidfd for the child, for signalling it safely (where the kernel has pidfds).
    pidfd: int | None = None
    _closed: bool = field(default=False, repr=False)

    def wait(self) -> ChildEvent:
        """Block until the child exits; its exit event (needs the exit fd)."""
        if self.exit_fd is None:
            raise InvalidArgumentError("this child was forked without exit_fd=True")
        os.set_blocking(self.exit_fd, True)
        try:
            event = read_exit_event(self.exit_fd)
        finally:
            os.set_blocking(self.exit_fd, False)
        assert event is not None
        return event

    def send_signal(self, sig: int) -> None:
        """Signal the child through its pidfd (never a recycled pid)."""
        if self.pidfd is None:
            raise InvalidArgumentError("no pidfd for this child: cannot signal it safely")
        signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        """Close our fds for this child (socket, exit fd, pidfd). The child runs on."""
        if self._closed:
            return
        self._closed = True
        if self.socket is not None:
            self.socket.close()
        for fd in (self.exit_fd, self.pidfd):
            if fd is not None:
                os.close(fd)

    def detach_fds(self) -> tuple[int | None, int | None]:
        """Hand the exit fd and pidfd over to someone else (a Context): ours no more."""
        fds = (self.exit_fd, self.pidfd)
        self.exit_fd = self.pidfd = None
        return fds


def _entry_ref(entry: object, names: Mapping[int, str]) -> str:
    """How the server will find ``entry``: a name given at start, or ``module:qualname``.
    A string goes as it is: the server knows its names, and says NO_ENTRY otherwise."""
    if isinstance(entry, str):
        return entry
    if id(entry) in names:
        return names[id(entry)]
    module, qualname = getattr(entry, "__module__", None), getattr(entry, "__qualname__", "")
    if not callable(entry) or not module or not qualname or "<" in qualname:
        raise InvalidArgumentError(
            f"{entry!r} cannot be found by the fork server: use a module-level function, a "
            "'module:function' string, or pass it to ForkServer.start(entries={...})"
        )
    return f"{module}:{qualname}"


def _resolve(ref: str, entries: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    if ref in entries:
        return entries[ref]
    module, _, qualname = ref.partition(":")
    if not module or not qualname:  # not a known name: import nothing
        raise LookupError(f"no entry named {ref!r} (give a name from start() or 'module:function')")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{ref} is not callable")
    return obj  # type: ignore[no-any-return]


# ==================================================================================
# The client
# ==================================================================================
class _Connection:
    """One socket to the server, shared by threads: requests carry ids, replies are
    matched by id; one thread at a time reads and hands others their replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        import threading  # noqa: PLC0415 - the client's; a fresh server must not load it

        self._send_lock = threading.Lock()
        self._cv = threading.Condition()
        self._replies: dict[int, tuple[dict[str, Any], list[int]]] = {}
        self._reading = False
        self._next_id = 1
        self._dead: str | None = None

    def request(
        self, op: str, body: dict[str, Any] | None = None, fds: Sequence[int] = ()
    ) -> tuple[dict[str, Any], list[int]]:
        with self._cv:
            if self._dead:
                raise ForkServerDied(self._dead)
            rid = self._next_id
            self._next_id += 1
        data = json.dumps({"id": rid, "op": op, **(body or {})}).encode()
        if len(data) > MAX_PACKET:
            raise InvalidArgumentError(f"request too large ({len(data)} bytes > {MAX_PACKET})")
        try:
            with self._send_lock:
                socket.send_fds(self.sock, [data], list(fds))
        except OSError as e:
            self._die(f"the fork server is gone ({e.strerror})")
            raise ForkServerDied(self._dead or "the fork server is gone") from e
        return self._await(rid)

    def _die(self, why: str) -> None:
        with self._cv:
            if self._dead is None:
                self._dead = why
            self._cv.notify_all()

    def _await(self, rid: int) -> tuple[dict[str, Any], list[int]]:
        with self._cv:
            while True:
                if rid in self._replies:
                    reply, fds = self._replies.pop(rid)
                    break
                if self._dead:
                    raise ForkServerDied(self._dead)
                if self._reading:
                    self._cv.wait()
                    continue
                self._reading = True
                self._cv.release()
                try:
                    got = self._read_one()
                finally:
                    self._cv.acquire()
                    self._reading = False
                if got is not None:
                    self._replies[got[0]] = got[1]
                self._cv.notify_all()
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise ForkServerError(
                reply.get("error", "the fork server failed"), reply.get("code", "ERROR"), reply.get("errno")
            )
        return reply, fds

    def _read_one(self) -> tuple[int, tuple[dict[str, Any], list[int]]] | None:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_PACKET, MAX_FDS)
        except OSError as e:
            self._die(f"the fork server connection failed ({e.strerror})")
            return None
        if not data:
            for fd in fds:
                os.close(fd)
            self._die("the fork server died (its socket closed)")
            return None
        reply = json.loads(data)
        return int(reply["id"]), (reply, fds)

    def close(self) -> None:
        self._die("this fork server connection was closed")
        self.sock.close()


class ForkServer:
    """A connection to a fork server; thread-safe. Start one with :meth:`start`."""

    def __init__(self, conn: _Connection, pid: int, entries: Mapping[int, str], owner: bool) -> None:
        self._conn = conn
        self._pid = pid
        self._names = entries  # id(callable) -> name, for entries registered at start
        self._owner = owner  # the process that started it (may stop it)
        self._reaped = False

    # -- lifecycle --------------------------------------------------------------
    @classmethod
    def start(
        cls,
        *,
        entries: Mapping[str, Callable[..., Any]] | None = None,
        max_clients: int = 64,
        on_parent_death: str = "terminate",
    ) -> ForkServer:
        """Fork the server now: call it early, before threads start and the heap grows.

        ``entries``: callables the children may run, by name (any callable, even a
        closure, as it exists at this moment). ``max_clients``: connections the
        server accepts at once (this one, plus children that keep one).
        ``on_parent_death``: when this process dies, ``"terminate"`` (SIGTERM the
        children, then exit) or ``"keep"`` (just exit; the children run on).
        Several servers per process are allowed.
        """
        cls._check_start_args(max_clients, on_parent_death)
        import threading  # noqa: PLC0415

        if threading.active_count() > 1:
            import warnings  # noqa: PLC0415

            warnings.warn(
                "ForkServer.start() with threads running: the server (and its children) are forked "
                "from a multi-threaded process; start it before threads",
                RuntimeWarning,
                stacklevel=2,
            )
        table = dict(entries or {})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                _Server(theirs, parent, table, max_clients, on_parent_death).serve()
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                os._exit(code)
        theirs.close()
        return cls(_Connection(ours), pid, {id(fn): name for name, fn in table.items()}, owner=True)

    @classmethod
    def start_fresh(
        cls,
        *,
        entries: Mapping[str, Callable[..., Any] | str] | None = None,
        preload: Sequence[str] = (),
        max_clients: int = 64,
        on_parent_death: str = "terminate",
    ) -> ForkServer:
        """Start the server as a fresh interpreter, not as a copy of this process.

        The server is ``python -I`` started with ``posix_spawn``: it holds only
        the standard library's start-up modules, childproc's server and what it
        imports for you, so its forks are cheaper than a copying server's
        (about two thirds of the time in ``bench bigparent``; a bare interpreter
        forks faster still). A copy made by :meth:`start` carries every module this
        process had imported, and the at-fork hooks of some of them
        (``threading``, ``logging``, ``random``) make each of its forks cost
        several times more. The price: entries must be importable, because
        nothing of this process is in the server.

        ``entries``: name -> a module-level function, or a ``"module:function"``
        string; they are imported in the server when it starts. ``preload``:
        modules to import in the server at start, so that the children do not
        each import them. The server's ``sys.path`` is this process's.
        ``max_clients`` and ``on_parent_death`` as for :meth:`start`.

        Raises :class:`~childproc.InvalidArgumentError` for an entry that a
        fresh interpreter cannot import (a lambda, a closure, a function of
        ``__main__``), and :class:`ForkServerError` if the server cannot start
        (an entry or a preloaded module fails to import; its traceback goes to
        the server's stderr, which is this process's).
        """
        cls._check_start_args(max_clients, on_parent_death)
        refs: dict[str, str] = {}
        names: dict[int, str] = {}
        for name, entry in (entries or {}).items():
            try:
                ref = _entry_ref(entry, {})
            except InvalidArgumentError:
                raise InvalidArgumentError(
                    f"entry {name!r}: {entry!r} cannot be imported by a fresh interpreter; use a "
                    "module-level function or a 'module:function' string, or ForkServer.start()"
                ) from None
            module, _, qualname = ref.partition(":")
            if not module or not qualname:
                raise InvalidArgumentError(
                    f"entry {name!r}: {ref!r} is not 'module:function' (a fresh server imports its entries)"
                )
            if module == "__main__":
                raise InvalidArgumentError(
                    f"entry {name!r} ({ref}) lives in __main__, which a fresh interpreter does not have: "
                    "move it to a module, or use ForkServer.start()"
                )
            refs[name] = ref
            if not isinstance(entry, str):
                names[id(entry)] = name
        if isinstance(preload, str) or not all(isinstance(m, str) for m in preload):
            raise InvalidArgumentError(f"preload must be a sequence of module names, not {preload!r}")
        # The server's sys.path is ours (str entries; '' stays "the current directory"),
        # with childproc's own location added last if it is not on it already.
        path = [p for p in sys.path if isinstance(p, str)]
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = json.dumps(
            {
                "fd": _FRESH_FD,
                "parent": os.getpid(),
                "entries": refs,
                "preload": list(preload),
                "max_clients": max_clients,
                "on_parent_death": on_parent_death,
                "path": path if package_root in path else [*path, package_root],
            }
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = spawn_process(
                [sys.executable, "-I", "-c", _FRESH_MAIN, config],
                env=None,
                cwd=None,
                pass_fds=(),
                stdin=None,
                stdout=None,
                stderr=None,
                fd_map={_FRESH_FD: theirs.fileno()},
            )
        except OSError as e:
            ours.close()
            raise ForkServerError(f"cannot start a fresh fork server: {e}", "START_ERROR", e.errno) from e
        finally:
            theirs.close()
        server = cls(_Connection(ours), pid, names, owner=True)
        try:
            # The server answers once its entries and preloads are imported; an
            # import that hangs must not hang us.
            ours.settimeout(_FRESH_START_TIMEOUT_S)
            try:
                server.ping()
            finally:
                ours.settimeout(None)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # whatever it was doing: it is not starting
            server._finish()  # closes our end, reaps the server
            if not isinstance(e, ForkServerError):
                raise
            raise ForkServerError(
                f"the fresh fork server did not start ({e}); its traceback, if any, is on stderr",
                "START_ERROR",
            ) from e
        return server

    @staticmethod
    def _check_start_args(max_clients: int, on_parent_death: str) -> None:
        if on_parent_death not in ("terminate", "keep"):
            raise InvalidArgumentError('on_parent_death must be "terminate" or "keep"')
        if not isinstance(max_clients, int) or isinstance(max_clients, bool) or max_clients < 1:
            raise InvalidArgumentError("max_clients must be an int >= 1")

    @property
    def pid(self) -> int:
        """The server's pid (libforks_get_server_pid)."""
        return self._pid

    def stop(self) -> None:
        """SIGTERM every child, wait until all have exited, stop the server (libforks_stop)."""
        self._conn.request("stop")
        self._finish()

    def stop_server_only(self) -> None:
        """Stop the server and leave its children running (libforks_stop_server_only)."""
        self._conn.request("stop_server_only")
        self._finish()

    def _finish(self) -> None:
        self._conn.close()
        if self._owner and not self._reaped:
            self._reaped = True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)

    def close(self) -> None:
        """Drop this connection (libforks_free_conn); the server runs on for others.
        In the process that started it, prefer :meth:`stop`."""
        self._conn.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        except ForkServerDied:
            self._finish()

    # -- requests -----------------------------------------------------------------
    def fork(
        self,
        entry: Callable[..., Any] | str,
        *args: Any,
        socket: bool = False,
        exit_fd: bool = True,
        server_conn: bool = False,
    ) -> ServedChild:
        """Fork a child that runs ``entry(server, sock, *args)`` and exits when it returns.

        ``entry`` is a name given to :meth:`start`, a ``"module:function"`` string
        or a module-level function. ``args`` must be JSON values. ``server`` is a
        :class:`ForkServer` connection for the child (``server_conn=True``) or
        None; ``sock`` is the child's end of a socket pair (``socket=True``) or None.
        The child is a copy of the server: of this process as it was at
        :meth:`start`, or of a fresh interpreter (:meth:`start_fresh`).
        """
        reply, fds = self._conn.request(
            "fork",
            {
                "entry": _entry_ref(entry, self._names),
                "args": list(args),
                "socket": socket,
                "exit_fd": exit_fd,
                "server_conn": server_conn,
            },
        )
        return self._served(reply, fds)

    def spawn(
        self,
        argv: Argv,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        exit_fd: bool = True,
    ) -> ServedChild:
        """Run a program from the server (``posix_spawn`` there): the exec path.

        Our ``pass_fds`` and ``stdin``/``stdout``/``stderr`` fds travel to the server
        (SCM_RIGHTS) and appear in the child at the same numbers / at 0, 1, 2.
        """
        if isinstance(argv, (str, bytes)) or not argv:
            raise InvalidArgumentError(f"argv must be a non-empty list of arguments, not {argv!r}")
        send = list(pass_fds) + [fd for fd in (stdin, stdout, stderr) if fd is not None]
        if len(send) > MAX_FDS:
            raise InvalidArgumentError(f"at most {MAX_FDS} fds per spawn")
        reply, fds = self._conn.request(
            "spawn",
            {
                "argv": [os.fsdecode(a) for a in argv],
                "env": dict(env) if env is not None else None,
                "cwd": cwd,
                "pass_fds": list(pass_fds),
                "stdio": [fd for fd in (stdin, stdout, stderr)],
                "exit_fd": exit_fd,
            },
            send,
        )
        return self._served(reply, fds)

    def _served(self, reply: dict[str, Any], fds: list[int]) -> ServedChild:
        it = iter(fds)
        child = ServedChild(pid=int(reply["pid"]))
        if reply.get("has_socket"):
            child.socket = socket.socket(fileno=next(it))
        if reply.get("has_exit_fd"):
            child.exit_fd = next(it)
            os.set_blocking(child.exit_fd, False)
        if reply.get("has_pidfd"):
            child.pidfd = next(it)
        for extra in it:  # never expected; never leaked
            os.close(extra)
        return child

    def kill_all(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to every child of the server except the caller (libforks_kill_all);
        returns how many were signalled."""
        reply, _ = self._conn.request("kill_all", {"signal": int(sig)})
        return int(reply["count"])

    def eval(self, fn: Callable[..., Any] | str, *args: Any) -> Any:
        """Run ``fn(*args)`` in the server and return its (JSON) result (libforks_eval).

        Powerful and dangerous: the server is single-threaded and serves everyone;
        a function that blocks or crashes takes it down.
        """
        reply, _ = self._conn.request("eval", {"entry": _entry_ref(fn, self._names), "args": list(args)})
        return reply.get("result")

    def connect(self) -> ForkServer:
        """A new, independent connection to the same server (counts toward ``max_clients``)."""
        _, fds = self._conn.request("connect")
        return ForkServer(_Connection(socket.socket(fileno=fds[0])), self._pid, self._names, owner=False)

    def ping(self) -> int:
        """Round-trip to the server; returns its pid."""
        reply, _ = self._conn.request("ping")
        return int(reply["pid"])


# ==================================================================================
# The server (runs in the forked copy)
# ==================================================================================
class _Bad(Exception):
    """A request the server refuses; becomes an error reply."""

    def __init__(self, message: str, code: str = "BAD_REQUEST", err: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.errno = err


@dataclass
class _Client:
    sock: socket.socket
    peer_pid: int


class _Server:
    def __init__(
        self,
        sock: socket.socket,
        parent: int,
        entries: Mapping[str, Callable[..., Any]],
        max_clients: int,
        on_parent_death: str,
    ) -> None:
        self.entries = entries
        self.max_clients = max_clients
        self.on_parent_death = on_parent_death
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.children: dict[int, int | None] = {}  # pid -> exit write fd
        self.running = True
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._add_client(sock, parent)
        self.parent_fd: int | None = None
        try:
            self.parent_fd = os.pidfd_open(parent)
        except (OSError, AttributeError):
            self.parent_fd = None  # fall back to polling getppid()
        self.parent = parent

    def _add_client(self, sock: socket.socket, peer_pid: int) -> None:
        # SO_PEERCRED would name whoever created the socketpair (the server, for
        # the pairs it makes), so the server records the pid it handed the end to.
        self.clients[sock.fileno()] = _Client(sock, peer_pid)
        self.sel.register(sock, selectors.EVENT_READ, "client")

    def serve(self) -> None:
        # The server is this process's only thread; make it deaf to the caller's
        # terminal signals (the caller stops it) and hear its own children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "sigchld")
        if self.parent_fd is not None:
            self.sel.register(self.parent_fd, selectors.EVENT_READ, "parent")
        while self.running:
            timeout = None if self.parent_fd is not None else 1.0
            for key, _ in self.sel.select(timeout):
                if key.data == "sigchld":
                    with contextlib.suppress(OSError):
                        while os.read(self.wake_r, 512):
                            pass
                    self._reap()
                elif key.data == "parent":
                    self._parent_died()
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._client_readable(key.fileobj)
            if self.parent_fd is None and os.getppid() != self.parent:
                self._parent_died()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._report_exit(pid, status)

    def _report_exit(self, pid: int, status: int) -> None:
        """Write ``pid``'s exit record to its exit fd, if it has one, and close it."""
        wfd = self.children.pop(pid, None)
        if wfd is not None:
            # One record on its own pipe: never blocks, whatever the caller does.
            with contextlib.suppress(OSError):
                os.write(wfd, EXIT_EVENT.pack(pid, status))
            os.close(wfd)

    def _parent_died(self) -> None:
        if self.on_parent_death == "terminate":
            for pid in list(self.children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.running = False

    def _drop(self, sock: socket.socket) -> None:
        self.clients.pop(sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        sock.close()

    def _client_readable(self, sock: socket.socket) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_PACKET + 1, MAX_FDS)
        except OSError:
            self._drop(sock)
            return
        if not data and not fds:
            self._drop(sock)  # the peer closed its end
            return
        rid: Any = None
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_PACKET:
                raise _Bad(f"request larger than {MAX_PACKET} bytes or carrying more than {MAX_FDS} fds")
            try:
                req = json.loads(data)
            except (ValueError, UnicodeDecodeError) as e:
                raise _Bad(f"not a JSON request: {e}") from None
            if not isinstance(req, dict):
                raise _Bad("a request is a JSON object")
            rid = req.get("id")
            if not isinstance(rid, int) or isinstance(rid, bool):
                raise _Bad("a request needs an integer id")
            handler = getattr(self, f"_op_{req.get('op')}", None) if isinstance(req.get("op"), str) else None
            if handler is None:
                raise _Bad(f"unknown operation {req.get('op')!r}")
            reply, out_fds = handler(req, fds, sock)
            fds = []  # the handler took ownership of what it was sent
            self._send(sock, {"id": rid, "ok": True, **reply}, out_fds)
        except _Bad as e:
            self._send(sock, {"id": rid, "ok": False, "error": str(e), "code": e.code, "errno": e.errno}, [])
        except Exception as e:  # a bug or an entry's failure: an error reply, never an abort
            self._send(
                sock, {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}", "code": "ERROR"}, []
            )
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _send(self, sock: socket.socket, reply: dict[str, Any], fds: list[int]) -> None:
        try:
            socket.send_fds(sock, [json.dumps(reply).encode()], fds)
        except OSError:
            self._drop(sock)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- operations ----------------------------------------------------------------------
    def _no_fds(self, fds: list[int]) -> None:
        if fds:
            raise _Bad("this request carries fds it has no use for")

    def _op_ping(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        return {"pid": os.getpid()}, []

    def _op_connect(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        self._check_room()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._add_client(ours, self.clients[sock.fileno()].peer_pid)
        return {}, [theirs.detach()]

    def _check_room(self) -> None:
        if len(self.clients) >= self.max_clients:
            raise _Bad(
                f"too many clients: the server accepts {self.max_clients} connections at once "
                "(raise ForkServer.start(max_clients=...))",
                "TOO_MANY_CLIENTS",
            )

    def _op_kill_all(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        sig = req.get("signal")
        if not isinstance(sig, int) or not 0 < sig < signal.NSIG:
            raise _Bad(f"not a signal number: {sig!r}")
        caller = self.clients[sock.fileno()].peer_pid
        count = 0
        for pid in list(self.children):
            if pid != caller:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                    count += 1
        return {"count": count}, []

    def _op_stop(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self._report_exit(pid, status)
        self.running = False
        return {}, []

    def _op_stop_server_only(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        self.running = False
        return {}, []

    def _op_eval(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        fn = self._entry(req)
        return {"result": fn(*self._args(req))}, []

    def _entry(self, req: dict[str, Any]) -> Callable[..., Any]:
        ref = req.get("entry")
        if not isinstance(ref, str) or len(ref) > 512:
            raise _Bad("entry must be a name or 'module:function'")
        try:
            return _resolve(ref, self.entries)
        except Exception as e:
            raise _Bad(f"cannot find entry {ref!r}: {type(e).__name__}: {e}", "NO_ENTRY") from None

    def _args(self, req: dict[str, Any]) -> list[Any]:
        args = req.get("args", [])
        if not isinstance(args, list):
            raise _Bad("args must be a list")
        return args

    def _flag(self, req: dict[str, Any], name: str) -> bool:
        value = req.get(name, False)
        if not isinstance(value, bool):
            raise _Bad(f"{name} must be true or false")
        return value

    def _new_child_fds(self, want_exit: bool) -> tuple[int | None, int | None]:
        if not want_exit:
            return None, None
        r, w = os.pipe2(os.O_CLOEXEC)
        return r, w

    def _register(
        self, pid: int, exit_r: int | None, exit_w: int | None, out: list[int], reply: dict[str, Any]
    ) -> None:
        self.children[pid] = exit_w
        if exit_r is not None:
            out.append(exit_r)
            reply["has_exit_fd"] = True
        try:
            out.append(os.pidfd_open(pid))
            reply["has_pidfd"] = True
        except (OSError, AttributeError):
            pass

    def _op_fork(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        self._no_fds(fds)
        fn = self._entry(req)
        args = self._args(req)
        want_sock, want_exit, want_conn = (self._flag(req, n) for n in ("socket", "exit_fd", "server_conn"))
        if want_conn:
            self._check_room()
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if want_sock else None
        conn_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if want_conn else None
        exit_r, exit_w = self._new_child_fds(want_exit)
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (exit_r, exit_w):
                if fd is not None:
                    os.close(fd)
            for p in (pair, conn_pair):
                if p is not None:
                    p[0].close()
                    p[1].close()
            raise _Bad(f"fork failed: {e.strerror}", "FORK_ERROR", e.errno) from None
        if pid == 0:
            for fd in (exit_r, exit_w):  # the child's own exit pipe is not the child's
                if fd is not None:
                    os.close(fd)
            self._become_child(fn, args, pair, conn_pair)
        reply: dict[str, Any] = {"pid": pid}
        out: list[int] = []
        if pair is not None:
            pair[1].close()
            out.append(pair[0].detach())
            reply["has_socket"] = True
        if conn_pair is not None:
            conn_pair[1].close()
            self._add_client(conn_pair[0], pid)
        self._register(pid, exit_r, exit_w, out, reply)
        return reply, out

    def _become_child(
        self,
        fn: Callable[..., Any],
        args: list[Any],
        pair: tuple[socket.socket, socket.socket] | None,
        conn_pair: tuple[socket.socket, socket.socket] | None,
    ) -> None:
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            self.sel.close()
            for client in self.clients.values():
                client.sock.close()
            for wfd in self.children.values():
                if wfd is not None:
                    os.close(wfd)
            for fd in (self.wake_r, self.wake_w, self.parent_fd):
                if fd is not None:
                    os.close(fd)
            sock = None
            if pair is not None:
                pair[0].close()
                sock = pair[1]
            server = None
            if conn_pair is not None:
                conn_pair[0].close()
                server = ForkServer(_Connection(conn_pair[1]), os.getppid(), {}, owner=False)
            result = fn(server, sock, *args)
            if isinstance(result, int) and not isinstance(result, bool):
                code = result
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _op_spawn(
        self, req: dict[str, Any], fds: list[int], sock: socket.socket
    ) -> tuple[dict[str, Any], list[int]]:
        try:
            argv = req.get("argv")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise _Bad("argv must be a non-empty list of strings")
            env = req.get("env")
            if env is not None and not (
                isinstance(env, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            ):
                raise _Bad("env must map strings to strings")
            cwd = req.get("cwd")
            if cwd is not None and not isinstance(cwd, str):
                raise _Bad("cwd must be a string")
            pass_fds, stdio = req.get("pass_fds", []), req.get("stdio", [None, None, None])
            if not (isinstance(pass_fds, list) and isinstance(stdio, list) and len(stdio) == 3):
                raise _Bad("pass_fds must be a list and stdio three fds or nulls")
            wanted = len(pass_fds) + sum(fd is not None for fd in stdio)
            if wanted != len(fds):
                raise _Bad(f"the request names {wanted} fds but carries {len(fds)}")
            # Our copies of the caller's fds arrived at new numbers: map them to the
            # numbers the caller gave (they appear there in the child).
            it = iter(fds)
            received = {target: next(it) for target in pass_fds}
            std = [next(it) if fd is not None else None for fd in stdio]
            want_exit = self._flag(req, "exit_fd")
            try:
                pid = _spawn_with_fd_map(argv, env, cwd, received, std)
            except OSError as e:
                raise _Bad(f"posix_spawn failed: {e.strerror}: {argv[0]!r}", "SPAWN_ERROR", e.errno) from None
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        fds.clear()
        exit_r, exit_w = self._new_child_fds(want_exit)
        reply: dict[str, Any] = {"pid": pid}
        out: list[int] = []
        self._register(pid, exit_r, exit_w, out, reply)
        if exit_w is None:
            self.children[pid] = None
        return reply, out


#: What a fresh server runs (``python -I -c _FRESH_MAIN CONFIG``): take the starter's
#: sys.path, then serve. -I: no PYTHON* variables and no user site of its own.
_FRESH_MAIN = (
    "import json, sys; config = json.loads(sys.argv[1]); sys.path[:] = config['path']; "
    "from childproc.forkserver import _serve_fresh; _serve_fresh(config)"
)
_FRESH_FD = 3  # where the server finds its end of the socket pair
_FRESH_START_TIMEOUT_S = 120.0  # for the server's imports (entries, preloads)


def _serve_fresh(config: dict[str, Any]) -> None:
    """The body of a server made by :meth:`ForkServer.start_fresh` (in that interpreter)."""
    sock = socket.socket(fileno=config["fd"])
    code = 0
    try:
        for module in config["preload"]:
            importlib.import_module(module)
        entries = {name: _resolve(ref, {}) for name, ref in config["entries"].items()}
        _Server(sock, config["parent"], entries, config["max_clients"], config["on_parent_death"]).serve()
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _spawn_with_fd_map(
    argv: list[str], env: dict[str, str] | None, cwd: str | None, fds: dict[int, int], std: list[int | None]
) -> int:
    """posix_spawn with fds[target] (server's numbers) appearing at ``target`` in the child."""
    if any(target in (0, 1, 2) for target in fds):
        raise _Bad("pass_fds cannot name 0, 1 or 2: use stdin/stdout/stderr")
    return spawn_process(
        argv, env=env, cwd=cwd, pass_fds=(), stdin=std[0], stdout=std[1], stderr=std[2], fd_map=fds
    )
