"""The fork server's own process: everything that runs inside a fork server.

:mod:`childproc.forkserver` is the caller's side (the API, the connection);
this module is the other end, and :mod:`childproc._forkserver_wire` the
protocol between them. This module does not import ``forkserver``: a child
that asks for a connection to its server (``fork(server_conn=True)``) gets it
from the ``child_connection`` function the starter gives :class:`Server`.

The measured rules. Every module in the server is memory that each ``fork()``
maps again and each child's exit unmaps, and after ``fork()`` each page the
server or the child writes faults and is copied while the other shares it (3
to 4 µs a page on a small VM). These rules are explained here once; the code
points back to them by number.

1. **Imports: only what the server's loop uses.** From the standard library
   ``os``, ``select``, ``gc``, ``io``, ``errno`` and ``sys``, and the C halves
   ``_signal``, ``_socket`` and ``_struct`` rather than ``signal``, ``socket``
   and ``struct`` (``signal.py`` and ``socket.py`` bring ``enum``,
   ``functools``, ``collections`` and ``selectors``, and ``array`` brings
   ``collections``: in a fresh server they made every fork some 15 % dearer).
   Of childproc only ``_forkserver_wire``, and ``_spawn`` (the exec path,
   loaded when a fresh server starts) with the ``_errors`` it raises: not
   ``_context`` (hence this module's own ``pidfd_of``), nor ``typing`` (it is
   a megabyte in every child: annotations are imported only for type
   checkers, under ``TYPE_CHECKING = False``), ``dataclasses``, ``threading``
   or ``logging``, which the rest of childproc uses. What only some requests
   need is imported inside the function that needs it, and a fork never
   does: ``json`` (and the ``re`` it brings; ``json`` alone made a bare
   interpreter's fork 15 % slower) once a request or reply carries JSON,
   ``socket`` once a child asks for a socket pair, ``importlib`` once an entry
   is named by module (``__import__`` for preloads), ``traceback`` once
   something fails. A fresh server (``ForkServer.start_fresh``) holds nothing
   else of childproc.
2. **Plain ints, never enums.** ``_socket``'s and ``_signal``'s constants are
   ints; ``socket``'s are ``enum.IntFlag`` members, and an ``|`` or ``&`` of
   two of them runs enum's Python code, which wrote some twenty-five pages a
   request. Sizes are plain ints too (``REQUEST_SIZE``: reading ``.size`` on
   every request wrote another page).
3. **Between two forks the server writes as little as it can.** In Python
   every reference count is a write, and each function called writes to its
   code object's page. So the loop is one ``epoll`` and a dict from fd to
   handler, children are watched through pidfds (no signal handler runs in
   the server), resolved entries and bound methods are kept, the hot paths
   (a request, a fork, a reply) are inline rather than split into helpers,
   and a new child closes what it inherited of the server's with plain
   ``os.close`` before it runs its entry. A fork's request and reply hold no
   JSON (decoding and encoding it touches some fifty pages each time).

Theory of operation. One thread and one ``epoll``. Registered in it: each
client socket (a request is readable), each child's pidfd (it exited), and
the starter's pidfd (it died). Requests and replies are ``_forkserver_wire``'s
packets. A fork makes, before forking, every fd the child and the caller will
need (so "out of fds" fails before there is a child), and keeps one fd slot
free for the child's pidfd. An exit is written as one ``EXIT_EVENT`` record to
the child's own exit pipe, which nobody else writes: a burst of exits never
blocks the server. Where the kernel has no pidfds (Linux before 5.3), the
server hears SIGCHLD through a wakeup pipe and reaps with ``waitpid(-1)``: its
children are the only children it has.
"""

from __future__ import annotations

import _socket
import _struct
import errno
import gc
import io
import os
import select
import sys

from ._forkserver_wire import (
    ANCDATA_SIZE,
    CONNECT,
    EVAL,
    EXIT_EVENT,
    FORK,
    FORK_WANTS,
    HAS_EXIT_FD,
    HAS_PIDFD,
    HAS_SOCKET,
    KILL_ALL,
    MAX_ENTRY_NAME,
    MAX_FDS,
    MAX_PACKET,
    MSG_CMSG_CLOEXEC,
    PING,
    REPLY,
    REQUEST,
    REQUEST_SIZE,
    SCM_RIGHTS,
    SOL_SOCKET,
    SPAWN,
    SPAWN_WANTS,
    STOP,
    STOP_SERVER_ONLY,
    TRUNCATED,
    WANT_EXIT_FD,
    WANT_SERVER_CONN,
    WANT_SOCKET,
    decode_call,
    error_reply,
    fds_in_ancdata,
)

TYPE_CHECKING = False  # rule 1: typing is not imported at run time
if TYPE_CHECKING:
    import signal as _signal
    import socket
    from collections.abc import Callable, Mapping
    from typing import Any, TypeAlias

    from typing_extensions import Buffer

    #: What an op returns: (HAS_* of the fds, pid or 0, result or None, fds to send).
    Result: TypeAlias = "tuple[int, int, dict[str, Any] | None, list[int]]"
    #: An op: (WANT_* flags, body, fds received, client fd) -> Result.
    Op: TypeAlias = "Callable[[int, bytes, list[int], int], Result]"
    #: Makes a served child's connection to its server, over the child's end of a socket
    #: pair: (that socket, the server's pid) -> the ``server`` its entry is given.
    ChildConnection: TypeAlias = "Callable[[_socket.socket, int], object]"
else:
    try:
        import _signal  # rules 1 and 2
    except ImportError:  # pragma: no cover - not CPython
        import signal as _signal

_set_handler = _signal.signal
_SIGINT, _SIGCHLD, _SIG_DFL, _SIG_IGN = int(_signal.SIGINT), int(_signal.SIGCHLD), 0, 1
_MAX_CACHED_ENTRIES = 256
#: Whether children are watched through pidfds. Tests set it False (before the
#: server starts) to run the fallback for kernels without pidfds.
USE_PIDFDS = hasattr(os, "pidfd_open")


class Bad(Exception):
    """A request the server refuses; becomes an error reply."""

    def __init__(self, message: str, code: str = "BAD_REQUEST", err: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.errno = err


def resolve(ref: str, entries: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The callable ``ref`` names: a name in ``entries``, or ``module:qualname`` (imported).
    A bare name not in ``entries`` raises LookupError and imports nothing."""
    if ref in entries:
        return entries[ref]
    module, _, qualname = ref.partition(":")
    if not module or not qualname:
        raise LookupError(f"no entry named {ref!r} (give a name from start() or 'module:function')")
    import importlib  # noqa: PLC0415 - rule 1

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{ref} is not callable")
    return obj  # type: ignore[no-any-return]


def _json(raw: bytes) -> Any:
    import json  # noqa: PLC0415 - rule 1

    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Bad(f"not JSON: {e}") from None


def _to_json(result: dict[str, Any]) -> bytes:
    import json  # noqa: PLC0415 - rule 1

    return json.dumps(result).encode()


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object a SPAWN or KILL_ALL body holds."""
    obj = _json(body)
    if not isinstance(obj, dict):
        raise Bad("this op's body is a JSON object")
    return obj


def _socket_pair_for_child() -> tuple[socket.socket, socket.socket]:
    """A stream socket pair, the child's end as documented for an entry: a
    ``socket.socket`` (rule 1: ``socket`` is imported the first time)."""
    import socket  # noqa: PLC0415 - rule 1

    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def pidfd_of(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where the kernel (or the fd table) has none.
    Not the context's (rule 1)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


class Server:
    """The loop of one fork server. Runs in the server process, in its only thread.

    ``child_connection`` makes the ``server`` argument of an entry forked with
    ``server_conn=True``; it is called only in that child. The starter provides it
    (``forkserver``'s ``ForkServer._for_child``): this module never imports the client.
    """

    def __init__(
        self,
        sock: _socket.socket,
        parent: int,
        entries: Mapping[str, Callable[..., Any]],
        max_clients: int,
        on_parent_death: str,
        *,
        child_connection: ChildConnection,
    ) -> None:
        self.entries = entries
        #: What a child that asked for a connection to the server gets (see ChildConnection).
        self.child_connection = child_connection
        self.resolved: dict[bytes, Callable[..., Any]] = {}  # entry name -> callable
        self.max_clients = max_clients
        self.on_parent_death = on_parent_death
        self.use_pidfds = USE_PIDFDS
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.clients: dict[int, tuple[_socket.socket, int]] = {}  # fd -> (socket, peer pid)
        self.children: dict[int, tuple[int | None, int | None]] = {}  # pid -> (exit write fd, pidfd)
        self.watched: dict[int, int] = {}  # pidfd -> pid
        #: Every fd the server holds for itself, which no child may keep (see _child_main).
        self.owned: dict[int, None] = {self.epoll.fileno(): None}
        self.ops: dict[int, Op] = {
            PING: self._op_ping,
            FORK: self._op_fork,
            SPAWN: self._op_spawn,
            CONNECT: self._op_connect,
            KILL_ALL: self._op_kill_all,
            EVAL: self._op_eval,
            STOP: self._op_stop,
            STOP_SERVER_ONLY: self._op_stop_server_only,
        }
        self._on_child_exit = self._child_exited  # bound once: not a new object per child
        self.running = True
        #: fds unwatched during the current round of events: a later event of the
        #: round may name the same number, closed and perhaps reused since.
        self.stale: set[int] = set()
        self.wake_r = self.wake_w = -1
        self.parent = parent
        self.parent_fd = pidfd_of(parent)  # None: poll getppid() instead
        if self.parent_fd is not None:
            self.owned[self.parent_fd] = None
        self._add_client(sock, parent)

    def _watch(self, fd: int, handler: Callable[[int], None]) -> None:
        self.epoll.register(fd, select.EPOLLIN)  # first: if it fails, nothing to undo
        self.handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        del self.handlers[fd]
        self.stale.add(fd)
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass

    def _add_client(self, sock: _socket.socket, peer_pid: int) -> None:
        # SO_PEERCRED would name whoever created the socketpair (the server, for
        # the pairs it makes), so the server records the pid it handed the end to.
        # Non-blocking: a client that sends what it does not read (or a wrong
        # wake-up) makes a send or receive fail, never the server wait.
        sock.setblocking(False)
        self._watch(sock.fileno(), self._client_readable)
        self.clients[sock.fileno()] = (sock, peer_pid)
        self.owned[sock.fileno()] = None

    def serve(self) -> None:
        _flush_stdio()  # what start-up (a preload, an entry's module) printed, before any fork
        # The server is this process's only thread. Deaf to the caller's terminal
        # signals (the caller stops it); no wakeup fd of the caller's.
        _set_handler(_SIGINT, _SIG_IGN)
        _signal.set_wakeup_fd(-1)
        if self.use_pidfds:
            _set_handler(_SIGCHLD, _SIG_DFL)  # children are heard through their pidfds
        else:
            self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.owned[self.wake_r] = self.owned[self.wake_w] = None
            _set_handler(_SIGCHLD, _ignore)
            _signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
            self._watch(self.wake_r, self._sigchld)
        if self.parent_fd is not None:
            self._watch(self.parent_fd, self._parent_died)
        gc.freeze()  # a full collection would write to every start-up object's page
        if os.getppid() != self.parent:  # died before the server got here (the pidfd may name a new process)
            self._parent_died(-1)
        timeout = -1.0 if self.parent_fd is not None else 1.0
        poll, handlers, stale = self.epoll.poll, self.handlers, self.stale
        while self.running:
            # At most 64 events a round: poll() with no limit mallocs a buffer for 1,023,
            # and the allocator's bookkeeping for it wrote some five pages a round.
            for fd, _ in poll(timeout, 64):
                handler = handlers.get(fd)
                if handler is not None and fd not in stale:
                    handler(fd)
                if not self.running:  # stopped: nothing more is served, not even this round
                    break
            stale.clear()
            if self.parent_fd is None and os.getppid() != self.parent:
                self._parent_died(-1)

    # -- children's exits ----------------------------------------------------------------
    def _child_exited(self, pidfd: int) -> None:
        pid = self.watched[pidfd]
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped behind the server's back (by eval'd code)
            self._report_exit(pid, None)  # no record: a made-up status would be a lie
            return
        if got:
            self._report_exit(pid, status)

    def _sigchld(self, fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except OSError:
            pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._report_exit(pid, status)

    def _report_exit(self, pid: int, status: int | None) -> None:
        """Write ``pid``'s exit record to its exit fd, if it has one; forget the child.
        With no ``status`` the exit fd is closed without a record."""
        wfd, pidfd = self.children.pop(pid, (None, None))
        if pidfd is not None:
            del self.watched[pidfd]
            del self.owned[pidfd]
            self._unwatch(pidfd)
            os.close(pidfd)
        if wfd is not None:
            del self.owned[wfd]
            # One record on its own pipe: never blocks, whatever the caller does.
            try:
                if status is not None:
                    os.write(wfd, EXIT_EVENT.pack(pid, status))
            except OSError:
                pass
            os.close(wfd)

    def _parent_died(self, fd: int) -> None:
        if self.on_parent_death == "terminate":
            self._signal_children(_signal.SIGTERM, sparing=None)
        self.running = False

    def _signal_children(self, sig: int, sparing: int | None) -> int:
        """Send ``sig`` to every unreaped child but ``sparing``; how many got it."""
        count = 0
        for pid in list(self.children):
            if pid != sparing:
                try:
                    os.kill(pid, sig)  # not reaped yet, so this pid is still ours
                    count += 1
                except ProcessLookupError:
                    pass
        return count

    # -- requests ------------------------------------------------------------------------
    def _drop(self, fd: int) -> None:
        entry = self.clients.pop(fd, None)
        if entry is not None:
            self._unwatch(fd)
            del self.owned[fd]
            entry[0].close()

    def _client_readable(self, fd: int) -> None:
        sock = self.clients[fd][0]
        try:
            # Client sockets are non-blocking: a wrong wake-up never blocks the server.
            # Close-on-exec (see fds_in_ancdata). Inline, as is the header below: rule 3.
            data, ancdata, flags, _ = sock.recvmsg(MAX_PACKET + 1, ANCDATA_SIZE, MSG_CMSG_CLOEXEC)
            fds = fds_in_ancdata(ancdata) if ancdata else []
        except BlockingIOError:
            return  # nothing there after all
        except OSError:
            self._drop(fd)
            return
        if not data and not fds:
            self._drop(fd)  # the peer closed its end
            return
        rid = 0  # until the header is read: what a reply to a request without one names
        try:
            if len(data) < REQUEST_SIZE:
                raise Bad(f"a request starts with a {REQUEST_SIZE}-byte header (id, op, flags)")
            rid, op, want = REQUEST.unpack_from(data)
            if flags & TRUNCATED or len(data) > MAX_PACKET:
                raise Bad(f"request larger than {MAX_PACKET} bytes or carrying more than {MAX_FDS} fds")
            handler = self.ops.get(op)
            if handler is None:
                raise Bad(f"unknown operation {op}")
            has, pid, result, out_fds = handler(want, data[REQUEST_SIZE:], fds, fd)
            fds = []  # the handler took ownership of what it was sent
            reply = REPLY.pack(rid, 1, has, pid)
            if result is not None:  # (ops with a result send no fds)
                reply += _to_json(result)
            self._send(fd, reply, out_fds)
        except Bad as e:
            self._send(fd, error_reply(rid, str(e), e.code, e.errno), [])
        except Exception as e:  # a bug or an entry's failure: an error reply, never an abort
            self._send(fd, error_reply(rid, f"{type(e).__name__}: {e}", "ERROR"), [])
        finally:
            for extra in fds:
                _close_quietly(extra)

    def _send(self, fd: int, data: bytes, fds: list[int]) -> None:
        """Send a reply and ``fds`` to client ``fd``, then close our copies of the fds.

        Never blocks: a client that leaves so many replies unread that its
        socket is full (a few hundred) is disconnected, so that it cannot stall
        the others."""
        entry = self.clients.get(fd)
        try:
            if entry is not None:
                if len(data) > MAX_PACKET:  # only an eval's result can be (it has no fds)
                    error = f"the reply would be {len(data)} bytes, more than {MAX_PACKET}"
                    data = error_reply(REPLY.unpack_from(data)[0], error, "TOO_LARGE")
                # What socket.send_fds does (and wire's ancdata_for_fds), with fewer objects
                # (rule 3). Non-blocking: see _add_client.
                rights = []
                if fds:
                    rights = [(SOL_SOCKET, SCM_RIGHTS, _struct.pack(f"{len(fds)}i", *fds))]
                entry[0].sendmsg([data], rights)
        except OSError:
            self._drop(fd)
        finally:
            watched = self.watched
            for sent in fds:
                if sent not in watched:  # a pidfd the server watches was sent as a copy
                    _close_quietly(sent)

    # -- operations ----------------------------------------------------------------------
    # Each op: (want, body, fds, client fd) -> (HAS_* of the fds, pid or 0, result or None, fds).
    def _no_fds(self, fds: list[int]) -> None:
        if fds:
            raise Bad("this request carries fds it has no use for")

    def _op_ping(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        self._no_fds(fds)
        return 0, os.getpid(), None, []

    def _op_connect(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        self._no_fds(fds)
        self._check_room()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        self._add_client(ours, self.clients[client][1])
        return HAS_SOCKET, 0, None, [theirs.detach()]

    def _check_room(self) -> None:
        if len(self.clients) >= self.max_clients:
            raise Bad(
                f"too many clients: the server accepts {self.max_clients} connections at once "
                "(raise ForkServer.start(max_clients=...))",
                "TOO_MANY_CLIENTS",
            )

    def _op_kill_all(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        self._no_fds(fds)
        sig = _json_object(body).get("signal")
        if not isinstance(sig, int) or isinstance(sig, bool) or not 0 < sig < _signal.NSIG:
            raise Bad(f"not a signal number: {sig!r}")
        return 0, 0, {"count": self._signal_children(sig, sparing=self.clients[client][1])}, []

    def _op_stop(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        self._no_fds(fds)
        self._signal_children(_signal.SIGTERM, sparing=None)
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self._report_exit(pid, status)
        self.running = False
        return 0, 0, None, []

    def _op_stop_server_only(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        self._no_fds(fds)
        self.running = False
        return 0, 0, None, []

    def _op_eval(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        self._no_fds(fds)
        fn, args = self._call(body)
        try:
            return 0, 0, {"result": fn(*args)}, []
        finally:
            _flush_stdio()  # what it printed, before the next fork

    def _call(self, body: bytes) -> tuple[Callable[..., Any], list[Any]]:
        """The entry and arguments a fork's or an eval's body names (see FORK)."""
        ref, raw_args = decode_call(body)
        fn = self.resolved.get(ref)
        if fn is None:
            try:
                name = ref.decode()
            except UnicodeDecodeError:
                raise Bad("the entry's name is not UTF-8") from None
            if not name or len(name) > MAX_ENTRY_NAME:
                raise Bad(f"entry must be a name or 'module:function' (at most {MAX_ENTRY_NAME} characters)")
            try:
                fn = resolve(name, self.entries)
            except Exception as e:
                raise Bad(f"cannot find entry {name!r}: {type(e).__name__}: {e}", "NO_ENTRY") from None
            if len(self.resolved) < _MAX_CACHED_ENTRIES:
                self.resolved[ref] = fn
        if not raw_args:
            return fn, []
        args = _json(raw_args)
        if not isinstance(args, list):
            raise Bad("args must be a JSON list")
        return fn, args

    def _new_child_fds(self, want_exit: int) -> tuple[tuple[int, int] | None, int]:
        """What every new child needs before it exists: its exit pipe (if wanted)
        and a free slot for its pidfd (see _adopt). Raises OSError, leaving
        nothing open."""
        exit_pipe = os.pipe2(os.O_CLOEXEC) if want_exit else None
        try:
            return exit_pipe, os.dup(self.epoll.fileno())
        except OSError:
            for fd in exit_pipe or ():
                os.close(fd)
            raise

    def _adopt(
        self, pid: int, slot: int, exit_pipe: tuple[int, int] | None, has: int, out: list[int], *, code: str
    ) -> Result:
        """Watch the new child ``pid`` and hand it to the caller: its exit fd and a
        pidfd are added to ``out`` (and ``has``), and the op's Result returned.

        ``slot`` is an fd kept open across the fork or spawn so that the pidfd
        has a place in the fd table. A child the server could not watch would
        have its exit lost, so if even then there is no pidfd, the child is
        killed, its exit pipe closed, and ``Bad(code)`` raised.

        One function where there could be three (rule 3; pidfd_of is a function too).
        """
        os.close(slot)
        pidfd = None
        if self.use_pidfds:
            try:
                pidfd = os.pidfd_open(pid)
                self.epoll.register(pidfd, select.EPOLLIN)
            except OSError as e:
                os.kill(pid, _signal.SIGKILL)  # not reaped yet: still ours
                os.waitpid(pid, 0)
                for fd in (pidfd, *(exit_pipe or ())):
                    if fd is not None:
                        os.close(fd)
                raise Bad(f"the server cannot watch the child (killed it): {e}", code) from None
            self.handlers[pidfd] = self._on_child_exit
            self.watched[pidfd] = pid
            self.owned[pidfd] = None
        if pid in self.children:  # reaped behind the server's back (eval), and the pid reused
            self._report_exit(pid, None)
        exit_w = None
        if exit_pipe is not None:
            out.append(exit_pipe[0])
            exit_w = exit_pipe[1]
            self.owned[exit_w] = None
            has |= HAS_EXIT_FD
        caller_pidfd = pidfd if pidfd is not None else pidfd_of(pid)  # a copy is sent, see _send
        if caller_pidfd is not None:
            out.append(caller_pidfd)
            has |= HAS_PIDFD
        self.children[pid] = (exit_w, pidfd)
        return has, pid, None, out

    def _op_fork(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        if fds:
            self._no_fds(fds)
        if want & ~FORK_WANTS:
            raise Bad(f"unknown fork flags {want:#x}")
        # An entry named before and given no arguments (the body is its name alone): no
        # parsing, no _call (rule 3).
        fn = self.resolved.get(body)
        if fn is None:
            fn, args = self._call(body)
        else:
            args = []
        want_sock = want & WANT_SOCKET
        want_exit = want & WANT_EXIT_FD
        want_conn = want & WANT_SERVER_CONN
        if want_conn:
            self._check_room()
        pair: tuple[socket.socket, socket.socket] | None = None
        conn_pair: tuple[_socket.socket, _socket.socket] | None = None
        exit_pipe: tuple[int, int] | None = None
        slot = -1
        try:
            if want_sock:
                pair = _socket_pair_for_child()
            if want_conn:
                conn_pair = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            exit_pipe, slot = self._new_child_fds(want_exit)
            # Made for this fork and not the child's: it closes them all first thing.
            made = [slot]
            if exit_pipe is not None:
                made += exit_pipe
            if pair is not None:
                made.append(pair[0].fileno())
            if conn_pair is not None:
                made.append(conn_pair[0].fileno())
            pid = os.fork()
        except OSError as e:
            for p in (pair, conn_pair):
                if p is not None:
                    p[0].close()
                    p[1].close()
            for fd in (*(exit_pipe or ()), slot):
                if fd >= 0:
                    _close_quietly(fd)
            raise Bad(f"fork failed: {e.strerror}", "FORK_ERROR", e.errno) from None
        if pid == 0:
            _child_main(
                self.owned,
                made,
                use_pidfds=self.use_pidfds,
                fn=fn,
                args=args,
                sock=pair[1] if pair is not None else None,
                server_sock=conn_pair[1] if conn_pair is not None else None,
                connect=self.child_connection if conn_pair is not None else None,
            )
        has = 0
        out: list[int] = []
        if pair is not None:
            pair[1].close()
            out.append(pair[0].detach())
            has = HAS_SOCKET
        try:
            result = self._adopt(pid, slot, exit_pipe, has, out, code="FORK_ERROR")
        except Bad:
            for fd in out:
                os.close(fd)
            if conn_pair is not None:
                conn_pair[0].close()
                conn_pair[1].close()
            raise
        if conn_pair is not None:
            conn_pair[1].close()
            try:
                self._add_client(conn_pair[0], pid)
            except OSError:  # epoll is full: the child's connection is closed, and it is told so
                conn_pair[0].close()  # when it uses it; the child itself is watched and handed over
        return result

    def _op_spawn(self, want: int, body: bytes, fds: list[int], client: int) -> Result:
        try:
            if want & ~SPAWN_WANTS:
                raise Bad(f"unknown spawn flags {want:#x}")
            req = _json_object(body)
            argv = req.get("argv")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise Bad("argv must be a non-empty list of strings")
            env = req.get("env")
            if env is not None and not (
                isinstance(env, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            ):
                raise Bad("env must map strings to strings")
            cwd = req.get("cwd")
            if cwd is not None and not isinstance(cwd, str):
                raise Bad("cwd must be a string")
            pass_fds, stdio = req.get("pass_fds", []), req.get("stdio", [None, None, None])
            if not (isinstance(pass_fds, list) and isinstance(stdio, list) and len(stdio) == 3):
                raise Bad("pass_fds must be a list and stdio three fds or nulls")
            wanted = len(pass_fds) + sum(fd is not None for fd in stdio)
            if wanted != len(fds):
                raise Bad(f"the request names {wanted} fds but carries {len(fds)}")
            # Our copies of the caller's fds arrived at new numbers: map them to the
            # numbers the caller gave (they appear there in the child).
            it = iter(fds)
            received = {target: next(it) for target in pass_fds}
            std = [next(it) if fd is not None else None for fd in stdio]
            try:
                exit_pipe, slot = self._new_child_fds(want & WANT_EXIT_FD)
            except OSError as e:
                raise Bad(f"no fds for the child: {e.strerror}", "SPAWN_ERROR", e.errno) from None
            made = [*(exit_pipe or ()), slot]  # closed if the spawn fails
            try:
                pid = _spawn_with_fd_map(argv, env, cwd, received, std)
            except BaseException as e:
                for fd in made:
                    _close_quietly(fd)
                if isinstance(e, OSError):
                    about_cwd = cwd is not None and e.filename == cwd
                    what = f"{cwd!r} (the cwd)" if about_cwd else f"{argv[0]!r}"
                    raise Bad(
                        f"cannot start the child: {e.strerror}: {what}", "SPAWN_ERROR", e.errno
                    ) from None
                raise
        finally:
            for fd in fds:
                _close_quietly(fd)
            fds.clear()  # closed here, on every path: the caller must not close them again
        return self._adopt(pid, slot, exit_pipe, 0, [], code="SPAWN_ERROR")


class _WholeWrites(io.FileIO):
    """A fresh server's raw stdout or stderr: a file whose ``write`` writes everything.

    ``FileIO.write`` may write only part of what it is given (a signal handler
    interrupts a write blocked on a full pipe) and returns the count; a
    ``TextIOWrapper`` that writes through to it ignores that count and would drop
    the rest, which is what ``python -u`` does. Raises ``BlockingIOError`` (with
    ``characters_written``) if the fd is non-blocking and full.
    """

    def write(self, data: Buffer, /) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = super().write(view[done:])
            if n is None:
                raise BlockingIOError(errno.EAGAIN, "stdout or stderr is non-blocking and full", done)
            done += n
        return done


class _WriteThroughText(io.TextIOWrapper):
    """A fresh server's ``sys.stdout`` or ``sys.stderr``: text that writes through to
    ``_WholeWrites``, and that tells ``_child_main`` to flush again if it is ever
    reconfigured not to write through (by a preload or an entry)."""

    def reconfigure(self, *args: Any, **kwargs: Any) -> None:
        global _WRITE_THROUGH_STDIO
        super().reconfigure(*args, **kwargs)
        if not self.write_through:
            _WRITE_THROUGH_STDIO = None


#: A fresh server's stdout and stderr, made by serve_fresh (None: not made, or one of them
#: no longer writes through). While a child's streams are these, nothing can wait in a
#: buffer, and it leaves without a flush.
_WRITE_THROUGH_STDIO: tuple[_WriteThroughText | None, _WriteThroughText | None] | None = None
#: The streams the interpreter started with, kept so that they never close fds 1 and 2.
_STARTUP_STDIO: list[object] = []


def _child_main(
    owned: Mapping[int, None],
    made: list[int],
    *,
    use_pidfds: bool,
    fn: Callable[..., Any],
    args: list[Any],
    sock: socket.socket | None,
    server_sock: _socket.socket | None,
    connect: ChildConnection | None,
) -> None:
    """A forked child, from its first line to its ``os._exit``.

    Rule 3 holds for the child too (each page it writes is copied): it closes
    the server's fds from one dict of numbers (``owned``: the epoll, the
    clients' sockets, other children's exit pipes and pidfds, the starter's
    pidfd) and the list of fds made for this fork, then runs its entry, and
    flushes stdio only if it may hold something (a flush touches some twenty
    pages). The server's objects around those numbers are never used again in
    the child, nor finalized: it leaves by ``os._exit``. ``server_sock`` and
    ``connect``: the child's end of its own connection to the server and what
    makes the entry's ``server`` of it, or None.
    """
    code = 0
    try:
        close = os.close
        for fd in owned:
            close(fd)
        for fd in made:
            close(fd)
        if not use_pidfds:
            _signal.set_wakeup_fd(-1)
            _set_handler(_SIGCHLD, _SIG_DFL)
        _set_handler(_SIGINT, _SIG_DFL)
        server = None
        if server_sock is not None and connect is not None:
            server = connect(server_sock, os.getppid())
        result = fn(server, sock, *args)
        if type(result) is int:
            code = result
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        code = 1  # first: printing the traceback can fail too (stderr closed, full, a broken pipe)
        _print_exc_quietly()
    finally:
        _flush_stdio()
        os._exit(code & 0xFF)  # (an exit status is a byte: 300 is 44, as the shell has it; os._exit
        # refuses an int beyond a C int, and would raise here, into the server's own code)


def _print_exc_quietly() -> None:
    """The current exception's traceback on stderr, if stderr takes it."""
    try:
        import traceback  # noqa: PLC0415 - rule 1: only a failing child pays for it

        traceback.print_exc()
    except BaseException:  # stderr closed or broken: nowhere left to tell
        pass


def _flush_stdio() -> None:
    """Flush stdout and stderr unless they are the fresh server's write-through ones
    (nothing can wait in those, and a flush is memory written: after start-up it
    measurably cost every later child a few more pages). In the server, what is
    buffered when it forks would be printed again by every child that flushes."""
    ours = _WRITE_THROUGH_STDIO
    if ours is not None and sys.stdout is ours[0] and sys.stderr is ours[1]:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # closed, broken or no stdio: nothing to tell
            pass


def _ignore(signum: int, frame: object) -> None:
    """SIGCHLD's handler where there are no pidfds: the wakeup fd does the work."""


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _spawn_with_fd_map(
    argv: list[str], env: dict[str, str] | None, cwd: str | None, fds: dict[int, int], std: list[int | None]
) -> int:
    """posix_spawn with fds[target] (server's numbers) appearing at ``target`` in the child."""
    if any(target in (0, 1, 2) for target in fds):
        raise Bad("pass_fds cannot name 0, 1 or 2: use stdin/stdout/stderr")
    from ._spawn import spawn_process  # noqa: PLC0415 - imported when the server starts, see serve_fresh

    return spawn_process(
        argv, env=env, cwd=cwd, pass_fds=(), stdin=std[0], stdout=std[1], stderr=std[2], fd_map=fds
    )


def _write_through_stdio() -> None:
    """Make a fresh server's stdout and stderr (``sys.__stdout__`` and
    ``sys.__stderr__`` too) text that writes through to ``_WholeWrites``: its
    children then leave without a flush (see _child_main), and lose nothing.
    Streams without an fd are left as they are."""
    global _WRITE_THROUGH_STDIO
    made: list[_WriteThroughText | None] = []
    for name in ("stdout", "stderr"):
        old = getattr(sys, name)
        try:
            fd = old.fileno()
        except Exception:  # None (no fd 1 or 2 at start), or not a file: left as it is
            made.append(old)
            continue
        raw = _WholeWrites(fd, "w", closefd=False)
        raw.name = f"<{name}>"  # as the interpreter names its own  # type: ignore[misc]
        text = _WriteThroughText(raw, encoding=old.encoding, errors=old.errors, write_through=True)
        text.mode = "w"  # type: ignore[misc]
        _STARTUP_STDIO.append(old)
        setattr(sys, name, text)
        setattr(sys, f"__{name}__", text)
        made.append(text)
    _WRITE_THROUGH_STDIO = (made[0], made[1])


def serve_fresh(config: dict[str, Any], child_connection: ChildConnection) -> None:
    """The body of a server made by ``ForkServer.start_fresh`` (in that interpreter).
    ``child_connection`` as for :class:`Server`: it must import nothing until it is
    called (in a child), or the server would hold what it imports (rule 1)."""
    global USE_PIDFDS
    USE_PIDFDS = config["use_pidfds"]  # the starter's choice (tests turn pidfds off)
    if config["unset_bind_now"]:  # ours (see ForkServer.start_fresh), not for what the server runs
        # (environ only: /proc/<pid>/environ still shows the variable the server started with)
        os.environ.pop("LD_BIND_NOW", None)
    # Only 0, 1, 2 and the socket are the server's: posix_spawn passed every inheritable
    # fd of the starter, which every child would hold open (a pipe would never see EOF).
    os.closerange(config["fd"] + 1, os.sysconf("SC_OPEN_MAX"))
    _write_through_stdio()
    code = 0
    try:
        os.set_inheritable(config["fd"], False)  # spawned programs must not get it
        sock = _socket.socket(fileno=config["fd"])
        from . import _spawn  # noqa: F401, PLC0415 - the exec path's, loaded before any child

        for module in config["preload"]:
            __import__(module)  # not importlib's: rule 1
        entries = {name: resolve(ref, {}) for name, ref in config["entries"].items()}
        Server(
            sock,
            config["parent"],
            entries,
            config["max_clients"],
            config["on_parent_death"],
            child_connection=child_connection,
        ).serve()
    except BaseException:
        code = 70
        _print_exc_quietly()
    finally:
        os._exit(code)
