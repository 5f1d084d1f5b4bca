"""Stop and continue events from a child handle, and a signal refused after the exit.

The child pauses. The parent stops it (SIGSTOP), continues it (SIGCONT),
does both again and finally kills it, printing each ChildEvent as it arrives.
Stops and continues need SIGCHLD (pidfds only report exits), so in
SELECTIVE_REAP mode childproc installs its handler while this child watches
them. Once the exit has been seen, send_signal() refuses with
ChildExitedError instead of signalling a pid that may have been reused.

Run it with ``python examples/child_events.py``.
"""

from __future__ import annotations

import os
import signal

import childproc
from childproc import EventCode

EXPECTED = [EventCode.STOPPED, EventCode.CONTINUED, EventCode.STOPPED, EventCode.CONTINUED, EventCode.KILLED]


def main() -> int:
    seen: list[childproc.ChildEvent] = []

    def on_event(child: childproc.Child, event: childproc.ChildEvent) -> None:
        seen.append(event)
        print(f"event: code={event.code.name} status={event.status} uid={event.uid}  ({event})")

    with childproc.Context() as ctx:
        ctx.setmode(childproc.Hooks(chldowner=childproc.SigchldOwner.SELECTIVE_REAP))
        # kill_on_close: should anything below go wrong, close() kills and reaps the child.
        child = ctx.fork(on_event, events=os.WEXITED | os.WSTOPPED | os.WCONTINUED, kill_on_close=True)
        if child is None:  # the child: wait for signals
            signal.pause()
            os._exit(0)

        for sig in (signal.SIGSTOP, signal.SIGCONT, signal.SIGSTOP, signal.SIGCONT, signal.SIGKILL):
            n = len(seen)
            child.send_signal(sig)  # one at a time: each change is seen before the next
            while len(seen) == n:
                if ctx.wait(timeout=10) == 0:
                    print(f"timed out waiting for the event after {sig.name}")
                    return 1

        try:
            child.send_signal(signal.SIGTERM)
        except childproc.ChildExitedError:
            print("send_signal after exit: ChildExitedError")
        else:
            print("send_signal after exit was not refused")
            return 1

    codes = [event.code for event in seen]
    if codes != EXPECTED or child.returncode != -signal.SIGKILL:
        print(f"wrong events: {[c.name for c in codes]}, returncode {child.returncode}")
        return 1
    print("event sequence as expected")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
