"""Twisted: childproc's children beside ``reactor.spawnProcess``.

Twisted owns SIGCHLD while its reactor runs and reaps only its own processes,
each with ``waitpid(pid)``. ``TwistedContext`` therefore installs no handler
(PIDFD mode) and hands the reactor the context's fd with ``addReader``. Twisted
runs a child of its own while childproc's child is running, and each side gets
its own exit code. The reactor is stopped at the end.

Run it with ``python examples/twisted_children.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet import reactor as _reactor
from twisted.python.failure import Failure

from childproc import twisted_host

LIBRARY_CODE = 3  # exit code of childproc's child
HOST_CODE = 4  # exit code of Twisted's child

reactor: Any = _reactor  # the global reactor provides several interfaces; mypy sees a module


class ExitCode(protocol.ProcessProtocol):
    """Fires ``done`` with the exit code Twisted reaped."""

    def __init__(self) -> None:
        self.done: defer.Deferred[int | None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        ended = reason.value
        assert isinstance(ended, (error.ProcessDone, error.ProcessTerminated))
        self.done.callback(ended.exitCode)


async def both() -> bool:
    ctx = twisted_host.TwistedContext(reactor)
    try:
        host = ExitCode()
        argv = ["/bin/sh", "-c", f"sleep 0.1; exit {HOST_CODE}"]
        reactor.spawnProcess(host, argv[0], argv, env=None)
        ours = ctx.spawn(["/bin/sh", "-c", f"sleep 0.2; exit {LIBRARY_CODE}"])
        event = await ours.deferred
        host_code = await host.done
    finally:
        ctx.close()
    print(f"childproc's child: {event}")
    print(f"Twisted's child: exit code {host_code}")
    return event.returncode == LIBRARY_CODE and host_code == HOST_CODE


def main() -> int:
    outcome: list[bool] = []

    def start() -> None:
        d = defer.ensureDeferred(both())
        d.addCallback(outcome.append)
        d.addErrback(lambda failure: print(f"failed: {failure.getErrorMessage()}"))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if outcome != [True]:
        print("wrong statuses")
        return 1
    print("both sides got their true exit codes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
