"""What :meth:`Context.run` returns and raises: ``subprocess``'s classes, and childproc's.

Each class here is the ``subprocess`` one (so code ported from ``subprocess``
keeps its ``except subprocess.TimeoutExpired`` and ``isinstance`` checks) and
carries the child's final :class:`~childproc.ChildEvent` too. The errors are
also :class:`~childproc.ChildprocError`. This module imports ``subprocess``;
nothing the fork server loads imports it.
"""

from __future__ import annotations

import subprocess
from typing import Any

from ._errors import ChildprocError
from ._status import ChildEvent

__all__ = ["CalledProcessError", "CompletedProcess", "TimeoutExpired"]


class CompletedProcess(subprocess.CompletedProcess[Any]):
    """``subprocess.CompletedProcess`` plus ``event``, the child's final
    :class:`~childproc.ChildEvent` (exit code or signal, and the child's uid
    where the kernel said), and ``pid``."""

    def __init__(
        self,
        args: Any,
        returncode: int,
        stdout: Any = None,
        stderr: Any = None,
        *,
        event: ChildEvent,
        pid: int,
    ) -> None:
        super().__init__(args, returncode, stdout, stderr)
        self.event = event
        self.pid = pid

    def check_returncode(self) -> None:
        """Raise :class:`CalledProcessError` if the exit code is not 0."""
        if self.returncode:
            raise CalledProcessError(
                self.returncode, self.args, self.stdout, self.stderr, event=self.event, pid=self.pid
            )


class CalledProcessError(ChildprocError, subprocess.CalledProcessError):
    """``run(check=True)``: the child exited with a non-zero code (or was killed).
    A ``subprocess.CalledProcessError`` with ``event`` and ``pid``."""

    def __init__(
        self,
        returncode: int,
        cmd: Any,
        output: Any = None,
        stderr: Any = None,
        *,
        event: ChildEvent | None = None,
        pid: int | None = None,
    ) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)
        Exception.__init__(self, returncode, cmd)  # args as the standard library's
        self.event = event
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_called,
            ((self.returncode, self.cmd, self.output, self.stderr, self.event, self.pid),),
        )


class TimeoutExpired(ChildprocError, subprocess.TimeoutExpired):
    """A timeout passed. From :meth:`Child.communicate` the child goes on and a
    later call carries on where this one stopped; from :meth:`Context.run` the
    child was killed and reaped first (``event`` says how it ended). ``output``
    and ``stderr`` hold what was read so far (bytes, as ``subprocess`` gives)."""

    def __init__(
        self,
        cmd: Any,
        timeout: float,
        output: bytes | None = None,
        stderr: bytes | None = None,
        *,
        event: ChildEvent | None = None,
        pid: int | None = None,
    ) -> None:
        subprocess.TimeoutExpired.__init__(self, cmd, timeout, output, stderr)
        Exception.__init__(self, cmd, timeout)
        self.event = event
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self.cmd, self.timeout, self.output, self.stderr, self.event, self.pid)
        return (_rebuild_timeout, (fields,))


def _rebuild_called(fields: tuple[Any, ...]) -> CalledProcessError:
    returncode, cmd, output, stderr, event, pid = fields
    return CalledProcessError(returncode, cmd, output, stderr, event=event, pid=pid)


def _rebuild_timeout(fields: tuple[Any, ...]) -> TimeoutExpired:
    cmd, timeout, output, stderr, event, pid = fields
    return TimeoutExpired(cmd, timeout, output, stderr, event=event, pid=pid)


for _cls in (CompletedProcess, CalledProcessError, TimeoutExpired):
    _cls.__module__ = "childproc"  # (where users find them: tracebacks, pickle, the docs)
