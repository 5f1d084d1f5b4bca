"""Workers forked through a fork server from a multi-threaded process.

The fork server starts first, while the process has one thread. Then a
heartbeat thread starts, and only then are the workers forked: by the server,
which is single-threaded, so no worker holds a copy of the heartbeat thread or
of a lock it held. Each worker gets a task over its socket and sends back the
result. One more worker gets the write end of a pipe (socket.send_fds) and
writes to it. A Context in PIDFD mode watches every worker (watch_served) and
prints each exit as it is dispatched. Leaving the ``with`` block stops the server.

Run it with ``python examples/forkserver_workers.py``.
"""

from __future__ import annotations

import os
import socket
import threading

import childproc
from childproc.forkserver import ForkServer

WRITER_EXIT = 3  # the pipe writer's exit code; the squarers exit with 0


def read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def square(server: object, sock: socket.socket | None) -> int:
    """The worker: read a number until EOF, send back its square and our thread count."""
    assert sock is not None
    n = int(read_all(sock))
    sock.sendall(f"{n * n} threads={threading.active_count()}".encode())
    return 0


def write_to_fd(server: object, sock: socket.socket | None) -> int:
    """The worker that is handed an fd: write a line to it."""
    assert sock is not None
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    os.write(fds[0], f"hello from worker {os.getpid()}\n".encode())
    return WRITER_EXIT


def main() -> int:
    # Entries by name: this file is "__main__" here, a name best not relied on.
    with ForkServer.start(entries={"square": square, "write_to_fd": write_to_fd}) as server:
        stop, beats = threading.Event(), [0]

        def beat() -> None:
            while not stop.wait(0.005):
                beats[0] += 1

        heartbeat = threading.Thread(target=beat, daemon=True)
        heartbeat.start()
        print(f"fork server {server.pid}; this process now has {threading.active_count()} threads")

        exits: dict[int, int | None] = {}

        def on_exit(child: childproc.Child, event: childproc.ChildEvent) -> None:
            exits[event.pid] = event.returncode
            print(f"worker exit: {event}")

        with childproc.Context() as ctx:
            ctx.setmode(childproc.Hooks(chldowner=childproc.SigchldOwner.PIDFD))
            numbers = [3, 4, 5]
            squarers = [server.fork("square", socket=True) for _ in numbers]
            read_end, write_end = os.pipe()
            writer = server.fork("write_to_fd", socket=True)
            workers = [*squarers, writer]
            for served in workers:
                ctx.watch_served(served, on_exit, kill_on_close=True)

            for served, n in zip(squarers, numbers, strict=True):
                assert served.socket is not None
                served.socket.sendall(str(n).encode())
                served.socket.shutdown(socket.SHUT_WR)  # EOF: the task is complete
            results: list[str] = []
            for served in squarers:  # they all work at once; collect in order
                assert served.socket is not None
                results.append(read_all(served.socket).decode())
                served.close()
            print(f"results: {results}")

            assert writer.socket is not None
            socket.send_fds(writer.socket, [b"fd"], [write_end])
            os.close(write_end)  # the writer's copy is now the only one
            with os.fdopen(read_end) as pipe:
                line = pipe.read()  # until the writer exits
            writer.close()
            print(f"from the pipe: {line.strip()}")

            while len(exits) < len(workers):
                if ctx.wait(timeout=10) == 0:
                    print("timed out waiting for the workers")
                    return 1
        stop.set()
        heartbeat.join()
        print(f"the heartbeat thread ran throughout ({beats[0]} beats)")

    wanted_exits = {**{s.pid: 0 for s in squarers}, writer.pid: WRITER_EXIT}
    if (
        results != [f"{n * n} threads=1" for n in numbers]
        or line != f"hello from worker {writer.pid}\n"
        or exits != wanted_exits
    ):
        print(f"wrong: results {results}, line {line!r}, exits {exits} (wanted {wanted_exits})")
        return 1
    print("every worker answered and exited as expected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
