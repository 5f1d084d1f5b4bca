"""Entry points for fork server tests: module-level, so the server can import them."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any


def echo(server: Any, sock: socket.socket | None, token: str) -> int:
    """Send back who we are and the token we were given."""
    assert sock is not None
    sock.sendall(f"{os.getpid()}:{token}".encode())
    return 0


def exit_with(server: Any, sock: Any, code: int) -> int:
    return code


def sleep_then(server: Any, sock: Any, seconds: float, code: int) -> int:
    time.sleep(seconds)
    return code


def pause_forever(server: Any, sock: Any) -> int:
    while True:
        signal.pause()


def write_to_passed_fd(server: Any, sock: socket.socket | None) -> int:
    """Receive an fd over the socket and write to it."""
    assert sock is not None
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    os.write(fds[0], b"written by a served child")
    return 0


def fork_grandchild(server: Any, sock: socket.socket | None) -> int:
    """Use the child's own server connection to fork a sibling."""
    assert server is not None and sock is not None
    sibling = server.fork("tests.integration.fs_entries:exit_with", 9)
    event = sibling.wait()
    sock.sendall(str(event.returncode).encode())
    return 0


def server_pid(*args: Any) -> int:
    return os.getpid()


def raise_error(server: Any, sock: Any) -> int:
    raise RuntimeError("entry failed on purpose")


def break_fork(*args: Any) -> None:
    """Run in the server by eval: make its next forks fail as if out of processes."""
    import errno  # noqa: PLC0415

    def failing_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    os.fork = failing_fork


def kill_all_then_report(server: Any, sock: socket.socket | None) -> int:
    """kill_all through the child's own connection must spare the child."""
    assert server is not None and sock is not None
    time.sleep(0.2)  # let the test fork a sibling
    n = server.kill_all(signal.SIGTERM)
    sock.sendall(f"survived {n}".encode())
    return 0


def loaded_modules(names: list[str]) -> list[str]:
    """Run in the server by eval: which of these modules it has imported."""
    import sys  # noqa: PLC0415

    return [name for name in names if name in sys.modules]


def kill_and_reap(pid: int) -> int:
    """Run in the server by eval: kill one of its children and reap it behind its back
    (in one request, so the server's loop cannot reap it first)."""
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _stdout_to_passed_fd(sock: socket.socket | None) -> socket.socket:
    """Receive an fd over the socket and make it fd 1 (what sys.stdout writes to)."""
    assert sock is not None
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    os.dup2(fds[0], 1)
    os.close(fds[0])
    return sock


def flood_stdout(server: Any, sock: socket.socket | None, size: int, via: str) -> int:
    """Put the passed pipe on fd 1 and print ``size`` bytes to it while a timer's
    Python-level handler keeps interrupting the blocked write (a short write)."""
    _stdout_to_passed_fd(sock)
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
    stream = sys.__stdout__ if via == "__stdout__" else sys.stdout
    assert stream is not None
    if via == "reconfigured":  # buffered from here on: this child must flush as it leaves
        stream.reconfigure(write_through=False)  # type: ignore[union-attr]
    print("x" * size, file=stream)
    signal.setitimer(signal.ITIMER_REAL, 0)
    return 0


def flood_nonblocking_stdout(server: Any, sock: socket.socket | None, size: int) -> int:
    """Print ``size`` bytes to a non-blocking pipe nobody reads: report (over the socket)
    what the BlockingIOError says was written."""
    sock = _stdout_to_passed_fd(sock)
    os.set_blocking(1, False)
    try:
        print("x" * size, end="")
    except BlockingIOError as e:
        sock.sendall(str(e.characters_written).encode())
        return 0
    return 1


def close_stderr_and_fail(server: Any, sock: Any) -> int:
    """Fail where the traceback cannot be printed."""
    os.close(2)
    raise RuntimeError("nobody will read this")
