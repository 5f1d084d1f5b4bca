"""The fork server: libforks's API, and each of libforks's faults, not repeated."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from childproc import Context, Hooks, InvalidArgumentError, SigchldOwner, _fork_server, _forkserver_wire
from childproc import forkserver as forkserver_mod
from childproc._forkserver_wire import FORK, HAS_EXIT_FD, HAS_PIDFD, PING, REPLY, REQUEST
from childproc.forkserver import (
    MAX_PACKET,
    ForkServer,
    ForkServerDied,
    ForkServerError,
    ServedChild,
    _Connection,
    read_exit_event,
)

from . import fs_entries, fs_lean
from .kids import drain
from .procutil import open_fds, proc_state, wait_until

E = "tests.integration.fs_entries"

# Earlier tests may leave trio's idle worker threads behind: start() rightly warns about threads.
pytestmark = pytest.mark.filterwarnings("ignore:ForkServer.start..:RuntimeWarning")


@pytest.fixture(params=["start", "start_fresh"])
def server(request: pytest.FixtureRequest) -> Iterator[ForkServer]:
    """Each test that takes it runs against both kinds of server: a copy of this
    process (start) and a fresh interpreter (start_fresh)."""
    srv = ForkServer.start() if request.param == "start" else ForkServer.start_fresh()
    try:
        yield srv
    finally:
        try:
            srv.stop()
        except ForkServerDied:
            srv._finish()


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def gone(pid: int) -> bool:
    """Not running any more (reaped, or a zombie awaiting its new parent)."""
    state = proc_state(pid)
    return state is None or state in "ZX"


# -- the API ------------------------------------------------------------------------------
def test_fork_with_socket_and_exit_fd(server: ForkServer) -> None:
    assert server.ping() == server.pid != os.getpid()
    child = server.fork(f"{E}:echo", "tok", socket=True)
    assert child.socket is not None and child.exit_fd is not None and child.pidfd is not None
    assert child.socket.recv(100).decode() == f"{child.pid}:tok"
    r, _, _ = select.select([child.exit_fd], [], [], 10)  # poll-able
    assert r == [child.exit_fd]
    event = read_exit_event(child.exit_fd)
    assert event is not None and event.pid == child.pid and event.returncode == 0
    child.close()


@pytest.mark.timeout(30)
def test_a_new_users_fork_server_misuses_get_errors_that_say_why(
    server: ForkServer, tmp_path: object
) -> None:
    """An exit code beyond a byte is the byte, as the shell has it (2**31 + 7 escaped into
    the server's own code in the child); a cwd that does not exist is named; a child
    watched once cannot be watched or waited for again through the ServedChild."""
    big = server.fork(f"{E}:exit_with", 2**31 + 7)
    assert big.wait().returncode == 7
    big.close()
    with pytest.raises(ForkServerError, match="the cwd"):
        server.spawn(["/bin/true"], cwd=str(tmp_path) + "/no-such-dir")
    with Context(SigchldOwner.PIDFD) as ctx:
        served = server.fork(f"{E}:exit_with", 3)
        handle = ctx.watch_served(served)
        with pytest.raises(InvalidArgumentError, match="no context has taken"):
            ctx.watch_served(served)
        with pytest.raises(InvalidArgumentError, match="handed to a Context"):
            served.wait()
        ev = handle.wait(10)
        assert ev is not None and ev.returncode == 3
        served.close()


@pytest.mark.timeout(30)
def test_a_forked_child_may_not_use_its_parents_server(server: ForkServer) -> None:
    """Parent and child would share one socket and take each other's replies: the
    child is refused, and the parent's connection goes on unharmed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            server.ping()
            os.write(w, b"used")
        except ForkServerError as exc:
            os.write(w, exc.code.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 100) == b"FORKED"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert server.ping() == server.pid


@pytest.mark.timeout(30)
def test_an_interrupt_right_after_the_reader_lets_go_of_the_lock_leaves_the_connection_usable(
    server: ForkServer,
) -> None:
    """A KeyboardInterrupt right after the reading thread released the connection's lock
    (a call returning is where CPython runs signal handlers) once left the reader's
    flag set, and the lock released twice: every later call hung or raised RuntimeError."""
    cv = server._conn._cv
    real = cv.release
    fired: list[bool] = []

    def release() -> None:
        real()
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt("simulated: right after the release")

    cv.release = release  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            server.ping()
    finally:
        cv.release = real  # type: ignore[method-assign]
    assert fired and server.ping() == server.pid


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["the reply taken", "the exit fd made non-blocking"])
def test_a_fork_interrupted_once_its_reply_came_closes_its_fds(
    server: ForkServer, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A KeyboardInterrupt in fork() once its reply came (where a call returns: CPython
    runs signal handlers there) left the reply's fds open for good: the socket, exit fd
    and pidfd of a child the caller never got. They are closed; the child runs on, as
    documented (the server's kill_all() reaches it)."""
    fired: list[bool] = []

    def after(real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            result = real(*args, **kwargs)
            if not fired:
                fired.append(True)
                raise KeyboardInterrupt(f"simulated: right after {where}")
            return result

        return call

    before = open_fds()
    if where == "the reply taken":
        monkeypatch.setattr(server._conn, "request", after(server._conn.request))
    else:
        monkeypatch.setattr(os, "set_blocking", after(os.set_blocking))
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        server.fork(f"{E}:pause_forever", socket=True)
    monkeypatch.undo()
    assert fired and open_fds() == before
    assert server.kill_all(signal.SIGKILL) == 1


@pytest.mark.timeout(60)
def test_an_interrupt_while_reading_another_thread_s_reply_never_leaves_it_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The main thread reads the connection; a reply for a worker arrives and a Ctrl-C
    lands as it is parsed: the reply is lost, and the worker, which then read the
    socket itself, waited for ever. The connection is declared dead: it gets
    ForkServerDied. An interrupt while the reader took its lock back again made the
    caller's 'with' release a lock it did not hold (RuntimeError): it is raised once
    the lock is held."""
    server = ForkServer.start()
    worker_rids: set[int] = set()
    real_parse, real_await = forkserver_mod._parse_reply, forkserver_mod._Connection._await

    def parse(data: bytes, fds: list[int], flags: int) -> Any:
        rid, reply = real_parse(data, fds, flags)
        if threading.current_thread() is threading.main_thread() and rid in worker_rids:
            raise KeyboardInterrupt("simulated: as another thread's reply is parsed")
        return rid, reply

    def slow_await(conn: Any, rid: int, got: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            worker_rids.add(rid)
            time.sleep(0.3)  # (the main thread is the reader when the worker's reply comes)
        return real_await(conn, rid, got)

    monkeypatch.setattr(forkserver_mod, "_parse_reply", parse)
    monkeypatch.setattr(forkserver_mod._Connection, "_await", slow_await)
    outcome: list[BaseException | object] = []

    def worker() -> None:
        try:
            outcome.append(server.eval("time:sleep", 0))
        except BaseException as exc:  # (what it got is the assertion)
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt, match="simulated"):
            server.eval("time:sleep", 0.1)
        thread.join(10)
        assert not thread.is_alive() and isinstance(outcome[0], ForkServerDied), outcome
    finally:
        os.kill(server.pid, signal.SIGKILL)  # (EOF: a worker still in recvmsg wakes)
        thread.join(10)
        with contextlib.suppress(ForkServerDied):
            server.stop()


@pytest.mark.timeout(30)
def test_an_interrupt_while_the_reader_takes_its_lock_back(server: ForkServer) -> None:
    cv = server._conn._cv
    real = cv.acquire
    fired: list[bool] = []

    def acquire(*args: Any) -> Any:
        if not fired and not cv._is_owned():  # type: ignore[attr-defined]
            fired.append(True)
            raise KeyboardInterrupt("simulated: while the lock is taken back")
        return real(*args)

    cv.acquire = acquire  # type: ignore[method-assign, assignment]
    try:
        with pytest.raises(KeyboardInterrupt, match="simulated"):
            server.ping()
    finally:
        cv.acquire = real  # type: ignore[method-assign]
    assert fired and server.ping() == server.pid


@pytest.mark.timeout(120)
def test_stop_while_other_threads_requests_are_in_flight_is_no_error() -> None:
    """The server stops with requests of other threads unread: the kernel resets the
    connection, and reports that once, before the replies queued for us, STOP's among
    them: stop() raised ForkServerDied ('Connection reset by peer') in about one round
    in seven. Those threads get ForkServerDied, as documented."""
    rng = random.Random(5)
    for _ in range(20):
        server = ForkServer.start()
        outcomes: list[str] = []

        def worker(server: ForkServer = server, outcomes: list[str] = outcomes) -> None:
            while True:
                try:
                    server.fork(f"{E}:exit_with", 0).close()
                except ForkServerDied:
                    outcomes.append("died")
                    return

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.01, 0.05))
        server.stop()
        for t in threads:
            t.join(10)
        assert outcomes == ["died"] * 3


def test_entry_forms_and_exit_codes() -> None:
    local = lambda server, sock, code: code  # noqa: E731 - a closure: only reachable by name
    with ForkServer.start(entries={"local": local}) as srv:
        for entry, code in ((f"{E}:exit_with", 3), (fs_entries.exit_with, 4), ("local", 5), (local, 6)):
            child = srv.fork(entry, code)
            assert child.wait().returncode == code
            child.close()
        crashed = srv.fork(f"{E}:raise_error")
        assert crashed.wait().returncode == 1
        crashed.close()
        for unknown in ("no.such.module:fn", "no_such_name"):
            with pytest.raises(ForkServerError) as info:
                srv.fork(unknown)
            assert info.value.code == "NO_ENTRY"
        with pytest.raises(Exception, match="cannot be found by the fork server"):
            srv.fork(lambda s, k: 0)


def test_spawn_exec_path_with_fds_env_cwd(server: ForkServer, tmp_path: object) -> None:
    out_r, out_w = os.pipe()
    extra_r, extra_w = os.pipe()
    try:
        code = f"import os, sys; print(os.getcwd(), os.environ['T']); os.write({extra_w}, b'x'); sys.exit(6)"
        # The extra fd travels to the server and appears in the child at the number we chose.
        child = server.spawn(
            [sys.executable, "-c", code],
            env={"T": "env-ok", "PATH": os.environ["PATH"]},
            cwd=str(tmp_path),
            pass_fds=[extra_w],
            stdout=out_w,
        )
        os.close(out_w)
        out_w = -1
        os.close(extra_w)
        extra_w = -1
        assert child.wait().returncode == 6
        assert os.read(out_r, 1000).decode().split() == [str(tmp_path), "env-ok"]
        assert os.read(extra_r, 10) == b"x"
        child.close()
        with pytest.raises(ForkServerError) as info:
            server.spawn(["/no/such/program"])
        assert info.value.errno == errno.ENOENT
    finally:
        for fd in (out_r, out_w, extra_r, extra_w):
            if fd >= 0:
                os.close(fd)


def test_passing_an_fd_to_a_served_child(server: ForkServer) -> None:
    r, w = os.pipe()
    child = server.fork(f"{E}:write_to_passed_fd", socket=True)
    assert child.socket is not None
    socket.send_fds(child.socket, [b"fd"], [w])
    os.close(w)
    assert child.wait().returncode == 0
    assert os.read(r, 100) == b"written by a served child"
    os.close(r)
    child.close()


def test_child_uses_its_own_server_connection(server: ForkServer) -> None:
    child = server.fork(f"{E}:fork_grandchild", socket=True, server_conn=True)
    assert child.socket is not None
    assert child.socket.recv(10) == b"9"
    assert child.wait().returncode == 0
    child.close()


def test_kill_all_and_stop_server_only() -> None:
    srv = ForkServer.start()
    kids = [srv.fork(f"{E}:pause_forever") for _ in range(3)]
    assert srv.kill_all(signal.SIGUSR1) == 3
    assert [k.wait().returncode for k in kids] == [-signal.SIGUSR1] * 3
    for k in kids:
        k.close()
    survivor = srv.fork(f"{E}:pause_forever")
    srv.stop_server_only()  # the child runs on, reparented
    assert not gone(survivor.pid) and gone(srv.pid)
    survivor.send_signal(signal.SIGKILL)  # its pidfd still reaches it safely
    assert survivor.pidfd is not None
    assert select.select([survivor.pidfd], [], [], 10)[0]  # it died (no server left to report how)
    with pytest.raises(ForkServerDied, match="stop_server_only"):
        survivor.wait()
    survivor.close()


def test_stop_terminates_and_waits_for_children() -> None:
    srv = ForkServer.start()
    kids = [srv.fork(f"{E}:pause_forever") for _ in range(3)]
    srv.stop()
    assert all(gone(k.pid) for k in kids) and gone(srv.pid)
    assert [k.wait().returncode for k in kids] == [-signal.SIGTERM] * 3
    for k in kids:
        k.close()
    with pytest.raises(ForkServerDied):
        srv.ping()


def test_eval_runs_in_the_server(server: ForkServer) -> None:
    assert server.eval(f"{E}:server_pid") == server.pid
    with pytest.raises(ForkServerError, match="RuntimeError"):
        server.eval(f"{E}:raise_error", None, None)
    assert server.ping() == server.pid  # it lives on


def test_several_servers_per_process() -> None:
    with ForkServer.start() as a, ForkServer.start() as b:
        assert a.pid != b.pid
        ca, cb = a.fork(f"{E}:exit_with", 1), b.fork(f"{E}:exit_with", 2)
        assert (ca.wait().returncode, cb.wait().returncode) == (1, 2)
        ca.close()
        cb.close()


def test_a_context_watches_served_children(server: ForkServer) -> None:
    got: list[tuple[int, int | None]] = []
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.PIDFD))
        kids = [
            ctx.watch_served(
                server.fork(f"{E}:sleep_then", 0.05, i), lambda c, e: got.append((e.pid, e.returncode))
            )
            for i in range(5)
        ]
        spawned = ctx.watch_served(server.spawn(["/bin/sh", "-c", "exit 7"]))
        sleeper = ctx.watch_served(server.fork(f"{E}:pause_forever"))
        owned = ctx.watch_served(server.fork(f"{E}:pause_forever"), kill_on_close=True)
        drain(ctx, lambda: len(got) == 5 and spawned.returncode is not None)
        assert sorted(rc for _, rc in got if rc is not None) == [0, 1, 2, 3, 4] and spawned.returncode == 7
        assert {p for p, _ in got} == {k.pid for k in kids}
        sleeper.terminate()  # through the pidfd the server sent
        assert sleeper.wait(10) is not None and sleeper.returncode == -signal.SIGTERM
    assert gone(owned.pid)  # killed and collected at close


# -- libforks's faults, each not repeated -----------------------------------------------------
def test_concurrent_forks_from_many_threads_never_swap_replies(server: ForkServer) -> None:
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(25):
            token = f"t{t}-{i}"
            child = server.fork(f"{E}:echo", token, socket=True)
            assert child.socket is not None
            msg = child.socket.recv(100).decode()
            assert child.wait().returncode == 0
            child.close()
            with lock:
                results.append((token, child.pid, msg))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 300
    assert all(msg == f"{pid}:{token}" for token, pid, msg in results)


def test_many_threads_waiting_on_one_connection_are_all_answered(server: ForkServer) -> None:
    """The server never blocks on a client: a reply that finds the client's socket
    full drops the client. Replies to many threads of one connection (each with
    one request outstanding) fit in its queue, a few hundred packets, and the
    connection is kept."""
    answers: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            pid = server.ping()
            with lock:
                answers.append(pid)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [server.pid] * (32 * 20)


@pytest.mark.timeout(300)
def test_a_burst_of_exits_never_blocks_the_server(server: ForkServer) -> None:
    kids = [server.fork(f"{E}:exit_with", i % 200) for i in range(2000)]  # nobody reads exit fds yet
    t0 = time.monotonic()
    assert server.ping() == server.pid
    assert time.monotonic() - t0 < 5.0
    for i, k in enumerate(kids):
        event = k.wait()
        assert event.pid == k.pid and event.returncode == i % 200
        k.close()


def test_what_cannot_be_sent_is_refused_before_the_server_sees_it(server: ForkServer) -> None:
    with pytest.raises(InvalidArgumentError, match="JSON values"):
        server.fork(f"{E}:exit_with", object())
    with pytest.raises(InvalidArgumentError, match="lone surrogates"):
        server.fork("tests.integration.fs_entries:exit\udc80with", 0)
    with pytest.raises(InvalidArgumentError, match="NUL"):
        server.eval("tests.integration.fs_entries:exit\0with", 0)
    assert server.ping() == server.pid


def test_a_child_the_server_cannot_watch_is_killed_and_the_request_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a pidfd the server could not report the child's exit: it kills and reaps
    the child, closes what it made for it, and fails the request; it serves on."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "no pidfd (a test)")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    srv = ForkServer.start()  # a copy of this process: it has the failing pidfd_open
    monkeypatch.undo()
    try:
        assert srv.ping() == srv.pid  # (the server is in its loop: whatever it opens at start is open)
        fds_before = _fds_of(srv.pid)
        with pytest.raises(ForkServerError, match="cannot watch the child") as info:
            srv.fork(f"{E}:pause_forever", socket=True, server_conn=True)
        assert info.value.code == "FORK_ERROR"
        with pytest.raises(ForkServerError, match="cannot watch the child") as info:
            srv.spawn(["/bin/sleep", "60"])
        assert info.value.code == "SPAWN_ERROR"
        assert srv.ping() == srv.pid
        with open(f"/proc/{srv.pid}/task/{srv.pid}/children") as children:
            assert children.read().split() == []
        # (a connection the server made for the child closes once the server has read its
        # EOF, in a later round of its loop than the reply)
        assert wait_until(lambda: _fds_of(srv.pid) == fds_before, timeout=5), (fds_before, _fds_of(srv.pid))
    finally:
        srv.stop()


def _fds_of(pid: int) -> dict[str, str]:
    """A process's open fds: number -> what it is."""
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            fds[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return fds


def test_errors_are_exceptions_and_a_dead_server_is_reported() -> None:
    srv = ForkServer.start()
    other = srv.connect()
    errors: list[BaseException] = []

    def pending() -> None:
        try:
            other.eval(f"{E}:sleep_then", None, None, 30, 0)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=pending)
    t.start()
    time.sleep(0.2)
    os.kill(srv.pid, signal.SIGKILL)
    t.join(10)
    assert errors and isinstance(errors[0], ForkServerDied)
    with pytest.raises(ForkServerDied):
        srv.fork(f"{E}:exit_with", 0)
    with pytest.raises(ForkServerDied):
        srv.ping()
    other.close()
    srv._finish()


def test_fork_failure_in_the_server_is_an_error_reply(server: ForkServer) -> None:
    server.eval(f"{E}:break_fork")
    with pytest.raises(ForkServerError) as info:
        server.fork(f"{E}:exit_with", 0)
    assert info.value.code == "FORK_ERROR" and info.value.errno == errno.EAGAIN
    assert server.ping() == server.pid


@pytest.mark.parametrize("start", ["start", "start_fresh"])
@pytest.mark.parametrize("policy", ["terminate", "keep"])
def test_the_server_notices_its_starter_died(policy: str, start: str) -> None:
    script = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from childproc.forkserver import ForkServer
srv = ForkServer.{start}(on_parent_death={policy!r})
child = srv.fork("{E}:pause_forever")
print(srv.pid, child.pid, flush=True)
os._exit(0)   # die abruptly: no stop()
"""
    # Read just the first line: a surviving child keeps the pipe open ("keep").
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(60) == 0
    server_pid, child_pid = map(int, line.split())
    deadline = time.monotonic() + 10
    while not gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone(server_pid)
    if policy == "terminate":
        while not gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gone(child_pid)
    else:
        assert not gone(child_pid)
        os.kill(child_pid, signal.SIGKILL)


def test_only_inherited_socketpairs_reach_the_server(server: ForkServer) -> None:
    inodes = set()
    for fd in os.listdir(f"/proc/{server.pid}/fd"):
        target = os.readlink(f"/proc/{server.pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    assert inodes
    with open(f"/proc/{server.pid}/net/unix") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    for row in rows:
        if row[6] in inodes:
            assert len(row) == 7, f"server socket bound to a name: {row}"  # no path, no @abstract
            assert int(row[3], 16) & 0x10000 == 0, "server socket listening"


def test_client_limit_is_configurable_and_reported() -> None:
    with ForkServer.start(max_clients=2) as srv:
        second = srv.connect()
        with pytest.raises(ForkServerError) as info:
            srv.connect()
        assert info.value.code == "TOO_MANY_CLIENTS" and "max_clients" in str(info.value)
        with pytest.raises(ForkServerError, match="too many clients"):
            srv.fork(f"{E}:exit_with", 0, server_conn=True)
        second.close()
        assert srv.ping() == srv.pid
        time.sleep(0.1)  # the server notices the closed connection
        srv.connect().close()  # room again


# -- the request decoder is an attack surface: fuzz it --------------------------------------------
def raw_exchange(sock: socket.socket, data: bytes, fds: list[int]) -> dict[str, object] | None:
    """Send one raw request; the reply as a dict (its header's fields, then its JSON)."""
    socket.send_fds(sock, [data], fds)
    reply, got, _, _ = socket.recv_fds(sock, MAX_PACKET, 16)
    for fd in got:
        os.close(fd)
    if not reply:
        return None
    rid, ok, has, pid = _forkserver_wire.REPLY.unpack_from(reply)
    rest = reply[_forkserver_wire.REPLY.size :]
    return {"id": rid, "ok": bool(ok), "has": has, "pid": pid, **(json.loads(rest) if rest else {})}


def request(rid: int, op: int, body: bytes = b"", want: int = 0) -> bytes:
    return _forkserver_wire.REQUEST.pack(rid, op, want) + body


#: Ops a fuzz case may name: none of them can stop the server, signal or run anything.
HARMLESS_OPS = [0, _forkserver_wire.PING, _forkserver_wire.CONNECT, 9, 200, 255]


def could_do_harm(payload: bytes) -> bool:
    """Whether a fuzz case asks for something real: to stop the server, signal its
    children, run a program, or import and call a function."""
    fs = _forkserver_wire
    if len(payload) < fs.REQUEST.size:
        return False
    op, body = fs.REQUEST.unpack_from(payload)[1], payload[fs.REQUEST.size :]
    if op in (fs.STOP, fs.STOP_SERVER_ONLY):
        return True
    if op in (fs.FORK, fs.EVAL):
        return b":" in body.partition(b"\0")[0]
    if op in (fs.KILL_ALL, fs.SPAWN):
        try:
            obj = json.loads(body)
        except ValueError:
            return False
        if not isinstance(obj, dict):
            return False
        if op == fs.KILL_ALL:
            return isinstance(obj.get("signal"), int) and not isinstance(obj.get("signal"), bool)
        return isinstance(obj.get("argv"), list) and bool(obj["argv"])
    return False


@pytest.fixture
def fuzz_server() -> Iterator[ForkServer]:
    srv = ForkServer.start()
    yield srv
    srv.stop()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
).map(lambda v: json.dumps(v).encode())
_IDS = st.integers(0, 2**64 - 1)
_NOT_AN_ENTRY = st.binary(max_size=40).filter(lambda b: b":" not in b)  # never imports a module
_SPAWN_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "argv": st.lists(st.text(max_size=10), max_size=3) | st.integers(),
        "env": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=2),
        "cwd": st.text(max_size=5) | st.integers(),
        "pass_fds": st.lists(st.integers(-3, 50), max_size=3) | st.text(max_size=3),
        "stdio": st.lists(st.none() | st.integers(0, 5), max_size=4),
    },
).map(lambda v: json.dumps(v).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(
        st.binary(max_size=300),  # anything, header or not
        st.builds(request, _IDS, st.sampled_from(HARMLESS_OPS), st.binary(max_size=200), st.integers(0, 255)),
        st.builds(request, _IDS, st.sampled_from(HARMLESS_OPS), _JSON_VALUES, st.integers(0, 255)),
        # fork and eval of names the server does not have, with any arguments and flags
        st.builds(
            lambda rid, op, name, args, want: request(rid, op, name + args, want),
            _IDS,
            st.sampled_from([_forkserver_wire.FORK, _forkserver_wire.EVAL]),
            _NOT_AN_ENTRY,
            st.just(b"")
            | st.binary(max_size=30).map(lambda b: b"\0" + b)
            | _JSON_VALUES.map(lambda b: b"\0" + b),
            st.integers(0, 255),
        ),
        # spawn and kill_all with bodies of every shape (none is a valid request: see below)
        st.builds(
            request, _IDS, st.just(_forkserver_wire.SPAWN), _SPAWN_BODIES | _JSON_VALUES, st.integers(0, 255)
        ),
        st.builds(
            request,
            _IDS,
            st.just(_forkserver_wire.KILL_ALL),
            st.fixed_dictionaries({"signal": st.text(max_size=3) | st.none() | st.integers(-5, 0)}).map(
                lambda v: json.dumps(v).encode()
            )
            | _JSON_VALUES,
            st.integers(0, 255),
        ),
    ),
    n_fds=st.integers(0, 3),
)
def test_malformed_requests_get_error_replies_and_the_server_lives_on(
    fuzz_server: ForkServer, payload: bytes, n_fds: int
) -> None:
    if could_do_harm(payload):
        return
    conn = fuzz_server.connect()
    raw = conn._conn.sock
    pipes = [os.pipe() for _ in range(n_fds)]
    try:
        reply = raw_exchange(raw, payload or b" ", [r for r, _ in pipes])
        assert reply is None or isinstance(reply, dict)
        if reply is not None and reply.get("ok") is not True:
            assert isinstance(reply.get("error"), str) and reply["error"]
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        conn.close()
    assert fuzz_server.ping() == fuzz_server.pid


def test_specific_malformed_requests(fuzz_server: ForkServer) -> None:
    conn = fuzz_server.connect()
    raw = conn._conn.sock
    # Settled: the server may still be dropping a connection an earlier test closed.
    before = fds_of(fuzz_server.pid)
    for _ in range(100):
        time.sleep(0.01)
        before, previous = fds_of(fuzz_server.pid), before
        if before == previous:
            break
    r, w = os.pipe()
    try:
        fs = _forkserver_wire
        cases = [
            (b"\xff\xfe not a header", []),  # too short for one
            (b"", [r]),  # only fds
            (request(1, 99), []),  # no such op
            (request(2, fs.PING), [r, w]),  # unexpected fds
            (request(3, fs.SPAWN, b"not json"), []),
            (request(4, fs.SPAWN, b"[1, 2, 3]"), []),  # not an object
            (request(5, fs.SPAWN, b'{"argv": ["/bin/true"], "pass_fds": [7], "stdio": [null, null]}'), []),
            (request(6, fs.SPAWN, b'{"argv": ["/bin/true"]}', want=fs.WANT_SOCKET), []),  # a fork's flag
            (request(7, fs.KILL_ALL, b'{"signal": "KILL"}'), []),
            (request(8, fs.FORK, b"os:getpid", want=0x80), []),  # unknown flag
            (request(9, fs.FORK, b"\xff\xfe"), []),  # a name that is not UTF-8
            (request(10, fs.FORK, b""), []),  # no name
            (request(11, fs.FORK, b"os:getpid\0{not json"), []),
            (request(12, fs.FORK, b'os:getpid\0{"a": 1}'), []),  # arguments that are not a list
            (request(13, fs.EVAL, b"no_such_entry"), []),
            (request(14, fs.FORK, b"x" * (MAX_PACKET + 100)), []),  # oversized: truncated on receipt
        ]
        for data, fds in cases:
            reply = raw_exchange(raw, data, fds)
            assert reply is not None and reply["ok"] is False, (data[:40], reply)
            assert isinstance(reply["error"], str) and reply["error"], reply
            expected = (
                _forkserver_wire.REQUEST.unpack_from(data)[0]
                if len(data) >= _forkserver_wire.REQUEST.size
                else 0
            )
            assert reply["id"] == expected  # even an error names the request it answers
        assert fds_of(fuzz_server.pid) == before  # no fd it was sent is kept
    finally:
        os.close(r)
        os.close(w)
        conn.close()
    assert fuzz_server.ping() == fuzz_server.pid


# -- regressions found in review -----------------------------------------------------------
def test_kill_all_from_a_child_spares_the_child(server: ForkServer) -> None:
    child = server.fork(f"{E}:kill_all_then_report", socket=True, server_conn=True)
    sibling = server.fork(f"{E}:pause_forever")
    assert child.socket is not None
    assert child.socket.recv(100) == b"survived 1"  # only the sibling was signalled
    assert child.wait().returncode == 0
    assert sibling.wait().returncode == -signal.SIGTERM
    child.close()
    sibling.close()


def test_a_child_does_not_hold_its_own_exit_pipe(server: ForkServer) -> None:
    child = server.fork(f"{E}:pause_forever")
    assert child.exit_fd is not None
    mine = os.fstat(child.exit_fd).st_ino

    def held_by_child() -> bool:
        for fd in os.listdir(f"/proc/{child.pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{child.pid}/fd/{fd}") == f"pipe:[{mine}]":
                    return True
        return False

    # The child closes it first thing after fork; give it the moment to get there.
    assert wait_until(lambda: not held_by_child(), timeout=5)
    time.sleep(0.1)
    assert not held_by_child()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.close()


def test_a_child_reaped_behind_the_servers_back_gets_no_made_up_status(server: ForkServer) -> None:
    child = server.fork(f"{E}:pause_forever")
    assert server.eval(f"{E}:kill_and_reap", child.pid) == signal.SIGKILL  # eval'd code took the status
    with pytest.raises(ForkServerDied, match="eval"):
        child.wait()  # no record rather than a wrong one
    child.close()
    assert server.ping() == server.pid


def test_nothing_is_served_after_stop_in_the_same_round(server: ForkServer) -> None:
    """Requests queued behind ``stop`` are not served, and a child's pidfd that stop
    closed is not mistaken for the socket that reused its number (the server would
    block reading it)."""
    stopper, forker, busy = server.connect(), server.connect(), server.connect()
    doomed = server.fork(f"{E}:pause_forever", exit_fd=False)
    got: dict[str, object] = {}

    def call(name: str, fn: object) -> None:
        try:
            got[name] = fn()  # type: ignore[operator]
        except ForkServerError as e:
            got[name] = e

    # The server sleeps in an eval while the others queue up: they arrive in one round.
    threads = [threading.Thread(target=call, args=("busy", lambda: busy.eval("time:sleep", 0.6)))]
    threads[0].start()
    time.sleep(0.2)
    for name, fn in (
        ("stop", stopper.stop),
        ("fork", lambda: forker.fork(f"{E}:pause_forever", server_conn=True)),
    ):
        threads.append(threading.Thread(target=call, args=(name, fn)))
        threads[-1].start()
        time.sleep(0.1)
    os.kill(doomed.pid, signal.SIGKILL)  # its pidfd is ready in the same round
    for t in threads:
        t.join(10)
    served = got.get("fork")
    if isinstance(served, ServedChild):  # the bug: kill it, or it outlives the test
        served.send_signal(signal.SIGKILL)
        served.close()
    assert got["stop"] is None
    assert isinstance(served, ForkServerDied)  # not served: no child outlives the server
    assert wait_until(lambda: gone(server.pid), timeout=5)
    for conn in (stopper, forker, busy):
        conn.close()
    doomed.close()


def test_no_server_fd_leaks_into_spawned_programs(server: ForkServer, request: pytest.FixtureRequest) -> None:
    """A spawned program gets 0, 1, 2 and what it was passed, at the number it was
    passed at: not the server's socket, not the server's copy of a passed fd. (And,
    from a copying server, whatever this process itself lets every program inherit;
    a fresh server closed those when it started.)"""
    ours = {int(n) for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")}
    inherited = sorted(fd for fd in ours if fd > 2 and os.get_inheritable(fd))
    if request.node.callspec.params["server"] == "start_fresh":
        inherited = []
    out_r, out_w = os.pipe()
    extra_r, extra_w = os.pipe()
    code = (  # listdir's own fd is gone by the time it is looked at: skip it
        "import os\n"
        "print(sorted(int(n) for n in os.listdir('/proc/self/fd') if os.path.exists(f'/proc/self/fd/{n}')))"
    )
    with os.fdopen(out_r) as reader:
        try:
            child = server.spawn([sys.executable, "-c", code], pass_fds=[extra_w], stdout=out_w)
        finally:
            for fd in (out_w, extra_r, extra_w):
                os.close(fd)
        try:
            assert child.wait().returncode == 0
            assert json.loads(reader.read()) == sorted([0, 1, 2, extra_w, *inherited])
            # The caller's fds for the child do not leak into its own spawns either.
            assert child.pidfd is not None and not os.get_inheritable(child.pidfd)
        finally:
            child.close()


# -- the client against a server that misbehaves (a socketpair plays the server) --------------


def _fake_server(
    answer: Callable[[int], tuple[bytes, list[int]]], close_sent: bool = True, hold: int = 1
) -> tuple[_Connection, threading.Thread]:
    """A connection whose server answers each request id with ``answer(id)``'s packet and fds
    (which it then closes, unless told not to); it answers nothing until ``hold`` requests
    have arrived (so that as many callers are waiting)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def serve() -> None:
        # The client left replies unread (reset), or closed its end before all were sent (EPIPE).
        with theirs, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            held = [theirs.recv(MAX_PACKET) for _ in range(hold - 1)]
            while packet := (held.pop(0) if held else theirs.recv(MAX_PACKET)):
                data, fds = answer(REQUEST.unpack_from(packet)[0])
                socket.send_fds(theirs, [data], fds)
                for fd in fds if close_sent else ():
                    os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return _Connection(ours), thread


@pytest.mark.parametrize(
    "packet",
    [
        b"\1\2\3",
        REPLY.pack(1, 1, 0, 0) + b"{not json",
        REPLY.pack(1, 1, 0, 0) + b"[1]",
        REPLY.pack(1, 1, HAS_EXIT_FD | HAS_PIDFD, 9),
    ],
    ids=["short", "bad-json", "not-an-object", "fds-missing"],
)
def test_a_malformed_reply_kills_the_connection_for_every_waiter(packet: bytes) -> None:
    conn, thread = _fake_server(lambda rid: (packet, []), hold=8)  # all 8 wait for it
    errors: list[BaseException] = []

    def call() -> None:
        try:
            conn.request(PING)
        except BaseException as e:
            errors.append(e)

    try:
        callers = [threading.Thread(target=call) for _ in range(8)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        assert len(errors) == 8  # every caller waiting is told, none hangs
        assert all(isinstance(e, ForkServerDied) and "cannot read" in str(e) for e in errors), errors
        with pytest.raises(ForkServerDied, match="cannot read"):  # and every later call
            conn.request(PING)
    finally:
        conn.close()
        thread.join(10)


def test_fds_that_do_not_fit_fail_one_request_and_the_connection_lives_on() -> None:
    """Out of fds here, the kernel drops the fds of a reply (MSG_CTRUNC): that request
    fails naming the child the server made, and the next one is served."""
    # Made now, and closed only at the end: the fake server's thread shares our fds and
    # their limit, and closing these would free room for the reply's.
    sent = list(os.pipe())

    def answer(rid: int) -> tuple[bytes, list[int]]:
        if rid == 1:
            return REPLY.pack(rid, 1, HAS_EXIT_FD | HAS_PIDFD, 4242), sent
        return REPLY.pack(rid, 1, 0, 777), []

    conn, thread = _fake_server(answer, close_sent=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # so no fd can be made
        try:
            with pytest.raises(ForkServerError) as info:
                conn.request(FORK)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert info.value.code == "FDS_LOST"
        assert "made child 4242" in str(info.value)
        assert conn.request(PING).pid == 777
    finally:
        conn.close()
        thread.join(10)
        for fd in sent:
            os.close(fd)


def test_a_reply_whose_caller_left_has_its_fds_closed() -> None:
    """A caller interrupted while it waits (KeyboardInterrupt) never takes its reply:
    the fds that reply brings are closed when it comes, not leaked."""
    release = threading.Event()

    def answer(rid: int) -> tuple[bytes, list[int]]:
        if rid == 1:
            release.wait(10)
            r, w = os.pipe()
            return REPLY.pack(rid, 1, HAS_EXIT_FD | HAS_PIDFD, 4242), [r, w]
        return REPLY.pack(rid, 1, 0, 777), []

    conn, thread = _fake_server(answer)
    before = set(os.listdir("/proc/self/fd"))
    interrupted = threading.Event()

    def interrupt_once(signum: int, frame: object) -> None:
        if not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt

    def interrupter() -> None:
        # Once the caller waits on the condition, SIGINT it until its handler ran: a
        # signal that lands just before the caller blocks in the lock's futex is only
        # handled at the next one (one run in CI hung for the timeout on a single signal).
        deadline = time.monotonic() + 30
        while not conn._cv._waiters and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        while not interrupted.wait(0.05) and time.monotonic() < deadline:
            signal.pthread_kill(main, signal.SIGINT)

    main = threading.main_thread().ident or 0
    old = signal.signal(signal.SIGINT, interrupt_once)
    try:
        conn._reading = True  # another thread is reading: request 1 will wait on the condition
        sender = threading.Thread(target=interrupter, daemon=True)
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            conn.request(FORK)
        sender.join(10)
        with conn._cv:
            conn._reading = False
        release.set()
        assert conn.request(PING).pid == 777  # reads reply 1 on the way, and closes its fds
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        signal.signal(signal.SIGINT, old)
        conn.close()
        thread.join(10)


def test_start_flushes_stdio_so_children_do_not_repeat_it() -> None:
    script = f"""
import sys
sys.path.insert(0, {os.getcwd()!r})
from childproc.forkserver import ForkServer
print("said once", end="")  # still in the buffer: stdout is a pipe
srv = ForkServer.start()
for _ in range(3):
    srv.fork("{E}:exit_with", 0).wait()
srv.stop()
"""
    argv = [sys.executable, "-c", script]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as by default
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "said once"


@pytest.mark.parametrize("via", ["stdout", "__stdout__", "reconfigured"])
def test_a_fresh_servers_child_loses_no_output(via: str) -> None:
    """A fresh server's children write through to stdout, and a write that a signal
    handler cuts short (a full pipe) is finished, not dropped; nothing waits in a buffer
    either, so the child's exit without a flush loses nothing, unless the entry made
    stdout buffered, and then it is flushed."""
    size = 200_000  # three pipe buffers
    with ForkServer.start_fresh() as srv:
        r, w = os.pipe()
        child = srv.fork(f"{E}:flood_stdout", size, via, socket=True)
        assert child.socket is not None
        socket.send_fds(child.socket, [b"fd"], [w])
        os.close(w)
        time.sleep(0.3)  # the pipe fills, and the timer interrupts the blocked write
        with os.fdopen(r, "rb") as reader:
            out = reader.read()
        assert child.wait().returncode == 0
        child.close()
    assert len(out) == size + 1


def test_a_fresh_servers_child_is_told_when_a_non_blocking_stdout_is_full() -> None:
    """A short write on a non-blocking stdout is an error that says how much was
    written (and that much is in the pipe), not data dropped in silence."""
    size = 200_000
    with ForkServer.start_fresh() as srv:
        r, w = os.pipe()
        child = srv.fork(f"{E}:flood_nonblocking_stdout", size, socket=True)
        assert child.socket is not None
        socket.send_fds(child.socket, [b"fd"], [w])
        os.close(w)
        assert child.wait().returncode == 0
        written = int(child.socket.recv(32))
        child.close()
        with os.fdopen(r, "rb") as reader:
            out = reader.read()
    assert 0 < written < size
    assert len(out) == written


def test_a_vanished_server_is_named_as_the_cause() -> None:
    srv = ForkServer.start()
    with Context(SigchldOwner.LIBXL) as ctx:
        ctx.setmode(Hooks(chldowner=SigchldOwner.PIDFD))
        child = ctx.watch_served(srv.fork(f"{E}:pause_forever"))
        srv.stop_server_only()
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(Exception, match="fork server that made child"):
            for _ in range(50):
                ctx.wait(0.2)


def signal_masks(pid: int) -> dict[str, int]:
    """A process's caught and ignored signals, from /proc (bit n-1 is signal n)."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, v in (line.split(":") for line in f) if k in ("SigCgt", "SigIgn")}


def bit(sig: int) -> int:
    return 1 << (sig - 1)


@pytest.mark.parametrize("start", ["start", "start_fresh"])
@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfds", "sigchld"])
def test_how_the_server_hears_its_children(start: str, pidfds: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pidfds (the default) no signal handler runs in the server; without them
    (kernels before 5.3) it catches SIGCHLD and reaps with waitpid(-1). Either way
    every exit is reported with its status, and a child starts with SIGCHLD and
    SIGINT at their defaults."""
    monkeypatch.setattr(_fork_server, "USE_PIDFDS", pidfds)
    srv = ForkServer.start() if start == "start" else ForkServer.start_fresh()
    try:
        assert srv.ping() == srv.pid  # serving: its signal dispositions are set
        caught = signal_masks(srv.pid)["SigCgt"] & bit(signal.SIGCHLD)
        assert bool(caught) is not pidfds
        kids = [srv.fork(f"{E}:exit_with", i) for i in range(40)]
        spawned = srv.spawn(["/bin/sh", "-c", "exit 7"])
        sleeper = srv.fork(f"{E}:pause_forever")
        assert wait_until(lambda: proc_state(sleeper.pid) == "S", timeout=10)
        masks = signal_masks(sleeper.pid)
        assert masks["SigCgt"] & bit(signal.SIGCHLD) == 0
        assert (masks["SigCgt"] | masks["SigIgn"]) & bit(signal.SIGINT) == 0
        assert [k.wait().returncode for k in kids] == list(range(40))
        assert spawned.wait().returncode == 7
        assert srv.kill_all(signal.SIGTERM) == 1
        assert sleeper.wait().returncode == -signal.SIGTERM
        for child in [*kids, spawned, sleeper]:
            child.close()
    finally:
        srv.stop()


# -- fresh servers --------------------------------------------------------------------------


def test_a_fresh_server_runs_importable_entries_and_loads_no_at_fork_hooks() -> None:
    with ForkServer.start_fresh(
        entries={"exit_with": fs_entries.exit_with, "pid": f"{E}:server_pid"}, preload=["json"]
    ) as srv:
        for entry in ("exit_with", fs_entries.exit_with, f"{E}:exit_with"):
            child = srv.fork(entry, 5)
            assert child.wait().returncode == 5
            child.close()
        assert srv.eval("pid") == srv.pid
        # The point of a fresh server: none of the modules whose at-fork hooks
        # would run in every child it forks.
        loaded = srv.eval(f"{E}:loaded_modules", ["threading", "logging", "random", "json"])
        assert loaded == ["json"]
        # A bare name the server does not know is refused without importing anything,
        # and a spawn that searches PATH does not import shutil (and so threading).
        with pytest.raises(ForkServerError) as info:
            srv.fork("threading")
        assert info.value.code == "NO_ENTRY"
        child = srv.spawn(["sh", "-c", "exit 0"], env={"PATH": os.defpath})
        assert child.wait().returncode == 0
        child.close()
        assert srv.eval(f"{E}:loaded_modules", ["threading", "shutil"]) == []
        child = srv.spawn(["/bin/sh", "-c", "exit 4"])
        assert child.wait().returncode == 4
        child.close()


@pytest.mark.parametrize("ours", [None, "1", ""], ids=["unset", "set", "empty"])
def test_a_fresh_server_gives_what_it_runs_the_starters_environment(
    ours: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server starts with LD_BIND_NOW (see start_fresh) and drops it at once, unless
    the starter set it itself: its entries and programs see the starter's environment."""
    if ours is None:
        monkeypatch.delenv("LD_BIND_NOW", raising=False)
    else:
        monkeypatch.setenv("LD_BIND_NOW", ours)
    with ForkServer.start_fresh() as srv:
        assert srv.eval("os:getenv", "LD_BIND_NOW") == ours
        check = 'test -z "${LD_BIND_NOW+set}"' if ours is None else f'test "$LD_BIND_NOW" = "{ours}"'
        child = srv.spawn(["/bin/sh", "-c", check])
        assert child.wait().returncode == 0
        child.close()


def test_the_starters_inheritable_fds_do_not_reach_a_fresh_server() -> None:
    """posix_spawn passes every inheritable fd; the server closes all but its own, or it
    and every child would hold them (a pipe's reader would never see EOF)."""
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        with ForkServer.start_fresh() as srv:
            pipe = os.readlink(f"/proc/self/fd/{w}")
            held = {os.readlink(f"/proc/{srv.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{srv.pid}/fd")}
            assert pipe not in held
            assert sorted(int(fd) for fd in os.listdir(f"/proc/{srv.pid}/fd"))[:4] == [0, 1, 2, 3]
    finally:
        os.close(r)
        os.close(w)


def test_output_buffered_while_a_fresh_server_starts_is_printed_once(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A preload that makes stdout buffered and prints: the server flushes before its
    first fork, or each child would print it again."""
    with ForkServer.start_fresh(preload=["tests.integration.fs_buffered_banner"]) as srv:
        for _ in range(3):
            child = srv.fork(f"{E}:exit_with", 0)
            assert child.wait().returncode == 0
            child.close()
    assert capfd.readouterr().out.count("banner from a preload") == 1


@pytest.mark.parametrize("start", ["start", "start_fresh"])
def test_a_failing_entry_exits_1_even_when_its_traceback_cannot_be_printed(start: str) -> None:
    srv = ForkServer.start() if start == "start" else ForkServer.start_fresh()
    with srv:
        child = srv.fork(f"{E}:close_stderr_and_fail")
        assert child.wait().returncode == 1
        child.close()


def test_a_request_with_a_closed_fd_is_refused_and_the_connection_lives_on() -> None:
    with ForkServer.start_fresh() as srv:
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        with pytest.raises(InvalidArgumentError, match="not open"):
            srv.spawn(["/bin/true"], stdout=w)
        assert srv.ping() == srv.pid


@pytest.mark.parametrize("start", ["start", "start_fresh"])
def test_a_server_that_cannot_be_reached_is_stopped_from_outside(start: str) -> None:
    """If the connection is lost while the server runs (here: declared dead, as after a
    reply it cannot read), stop() does not wait for ever: it SIGTERMs the server's
    children and kills and reaps the server, then raises ForkServerDied."""
    srv = ForkServer.start() if start == "start" else ForkServer.start_fresh()
    child = srv.fork(f"{E}:pause_forever")
    assert child.pidfd is not None
    srv._conn._die("declared dead by a test")
    with pytest.raises(ForkServerDied, match="declared dead"):
        srv.stop()
    assert select.select([child.pidfd], [], [], 10)[0]  # the child is gone
    with pytest.raises(ChildProcessError):  # and the server reaped
        os.waitpid(srv.pid, os.WNOHANG)
    child.close()
    with srv:  # a with block around a stopped server is fine
        pass


def test_a_fresh_server_holds_only_what_its_loop_uses() -> None:
    """Every module in the server is mapped again by each fork and unmapped by each
    child's exit: a fresh server loads childproc's server module and nothing else of
    childproc (nor typing or dataclasses, which the rest of childproc uses), and of
    the standard library's socket, signal and struct only their C halves (the Python
    halves bring enum, functools and collections): nothing of fs_lean.WATCHED but the
    server module, beyond what this environment's own start-up loads (an editable
    install's import hook, run by site, loads enum and functools in every interpreter)."""
    with ForkServer.start_fresh(entries={"child": "tests.integration.fs_lean:child_returns"}) as srv:
        # json (and re) only once a request needs it, and a fork never does: seen from outside,
        # as the _json extension mapped into the server, because asking the server would load it.
        for _ in range(3):
            child = srv.fork("child")
            assert child.wait().returncode == 0
            child.close()
        if "_json" not in sys.builtin_module_names:
            with open(f"/proc/{srv.pid}/maps") as maps:
                assert "/_json." not in maps.read()
        ask = f"import sys; print(*[n for n in {fs_lean.WATCHED!r} if n in sys.modules])"
        startup = subprocess.run(
            [sys.executable, "-I", "-c", ask],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
        expected = [n for n in fs_lean.WATCHED if n in startup or n == "childproc._fork_server"]
        assert srv.eval("tests.integration.fs_lean:loaded") == expected


def main_entry(server: object, sock: object) -> int:
    return 0


def test_a_fresh_server_out_of_fds_refuses_a_fork_and_serves_on() -> None:
    """The error path needs no new fd (its reply is written without json, which the
    server has not loaded): running out of fds is a FORK_ERROR reply naming EMFILE,
    not a dropped client, and the server serves the next request."""
    with ForkServer.start_fresh(
        entries={"pause": f"{E}:pause_forever"}, preload=["tests.integration.fs_lowfd"]
    ) as srv:
        kids: list[ServedChild] = []
        with pytest.raises(ForkServerError) as info:
            for _ in range(64):
                kids.append(srv.fork("pause", exit_fd=False))
        assert (info.value.code, info.value.errno) == ("FORK_ERROR", errno.EMFILE)
        assert not isinstance(info.value, ForkServerDied)
        assert 0 < len(kids) < 64
        assert srv.ping() == srv.pid
        if "_json" not in sys.builtin_module_names:
            with open(f"/proc/{srv.pid}/maps") as maps:
                assert "/_json." not in maps.read()
        for child in kids:
            child.close()
    # stop() (the with block's end) terminated and reaped the children


def test_a_fresh_server_refuses_what_it_cannot_import() -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be imported by a fresh interpreter"):
        ForkServer.start_fresh(entries={"x": lambda server, sock: 0})
    main_entry.__module__ = "__main__"
    try:
        with pytest.raises(InvalidArgumentError, match="__main__"):
            ForkServer.start_fresh(entries={"m": main_entry})
    finally:
        main_entry.__module__ = __name__
    with pytest.raises(InvalidArgumentError, match="not 'module:function'"):
        ForkServer.start_fresh(entries={"w": "tests.integration.fs_entries.exit_with"})
    with pytest.raises(InvalidArgumentError, match="cannot be imported"):
        ForkServer.start_fresh(entries={"p": functools.partial(fs_entries.exit_with, code=1)})
    with pytest.raises(InvalidArgumentError, match="preload"):
        ForkServer.start_fresh(preload="json")
    # A module that fails to import in the server: a clear error, and the server reaped.
    with pytest.raises(ForkServerError, match="did not start"):
        ForkServer.start_fresh(preload=["tests.integration.no_such_module"])


@given(message=st.text(max_size=60), err=st.none() | st.integers(0, 200))
@settings(max_examples=200, deadline=None)
def test_error_replies_are_json_without_json(message: str, err: int | None) -> None:
    """Error replies are written by hand (the error path must not import json, which
    can fail for want of fds): whatever the message holds, the client reads it back."""
    reply = _forkserver_wire.error_reply(7, message, "FORK_ERROR", err)
    rid, ok, has, pid = _forkserver_wire.REPLY.unpack_from(reply)
    body = json.loads(reply[_forkserver_wire.REPLY.size :])
    assert (rid, ok, has, pid) == (7, 0, 0, 0)
    assert body == {"error": message.encode("utf-8", "replace").decode(), "code": "FORK_ERROR", "errno": err}
