"""What the policy tables say for one :class:`Hooks`, looked up once at ``setmode()``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidArgumentError
from ._policy import Destination, ForeignCheck, Owner, Reaper, SigchldOwner, route, rules_for, wants_handler

__all__ = ["ForkReplacement", "Hooks", "Plan", "ReapedCallback"]

#: ``fork_replacement(user) -> pid``: called instead of ``os.fork()``.
ForkReplacement = Callable[[Any], int]
#: ``reaped_callback(pid, status, user) -> bool | None`` for pids nobody in childproc made.
ReapedCallback = Callable[[int, int, Any], bool | None]


@dataclass(frozen=True)
class Hooks:
    """How a context shares child processes with its host (libxl's ``libxl_childproc_hooks``).

    ``chldowner``
        Who owns SIGCHLD and reaping: a :class:`SigchldOwner` (default
        ``SELECTIVE_REAP``: only childproc's own children are ever reaped).
    ``fork_replacement``
        Called as ``fork_replacement(user)`` instead of ``os.fork()``; must behave
        like it (pid in the parent, 0 in the child, ``OSError`` on failure) and
        must not call back into childproc.
    ``reaped_callback``
        LIBXL and LIBXL_ALWAYS only: called as ``reaped_callback(pid, status, user)``
        for each reaped pid that no childproc context made (in LIBXL_ALWAYS with a
        process-group tree, also a descendant that left the tree's group with
        ``setsid()`` and came back as an orphan; but a child of yours that joined
        such a tree's group is the tree's: see ``docs/trees.rst``). Return
        True or None if the application knows the pid, False if not (then a
        warning is logged).
        Runs from ``dispatch()``/``wait()``, never from a signal handler.
    """

    chldowner: SigchldOwner = SigchldOwner.SELECTIVE_REAP
    fork_replacement: ForkReplacement | None = None
    reaped_callback: ReapedCallback | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.chldowner, SigchldOwner):
            raise InvalidArgumentError(
                f"Hooks.chldowner must be a SigchldOwner (e.g. SigchldOwner.MAINLOOP), not {self.chldowner!r}"
            )
        for name in ("fork_replacement", "reaped_callback"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidArgumentError(f"Hooks.{name} must be callable or None, not {value!r}")
        if self.reaped_callback is not None and not rules_for(self.chldowner).takes_reaped_callback:
            raise InvalidArgumentError(
                f"Hooks.reaped_callback is only used in LIBXL and LIBXL_ALWAYS, where the library "
                f"reaps children it did not make; {self.chldowner.name} never does"
            )


class Plan:
    """The decisions of :mod:`childproc._policy` for one :class:`Hooks`, as plain
    attributes read on every child's path."""

    __slots__ = (
        "echild_means_stolen",
        "first_child_check",
        "mode",
        "pidfd_wakeups",
        "pidfds",
        "refuse_ignored_at_setmode",
        "route",
        "rules",
        "wants_handler",
    )

    def __init__(self, hooks: Hooks, pidfds: bool) -> None:
        mode = self.mode = hooks.chldowner
        rules = self.rules = rules_for(mode)
        #: indexed by 2 * (has unreaped children) + (has stop/continue watchers)
        self.wants_handler = tuple(
            wants_handler(mode, children, pidfds, stops) for children in (0, 1) for stops in (0, 1)
        )
        has_cb = hooks.reaped_callback is not None
        #: Where a reaped pid goes, by whose it is: :func:`childproc._policy.route`,
        #: the one place that decides it (None: a combination that cannot happen).
        self.route: dict[Owner, Destination | None] = {}
        for owner in Owner:
            try:
                self.route[owner] = route(mode, owner, has_cb)
            except KeyError:
                self.route[owner] = None
        #: pidfds work here: each child gets one.
        self.pidfds = pidfds
        #: ...and they wake the context (see ``ModeRules.pidfd_wakeups``).
        self.pidfd_wakeups = rules.pidfd_wakeups
        #: Refuse the first child while the process has children nobody here made.
        self.first_child_check = rules.foreign_children_check is ForeignCheck.FIRST_CHILD
        #: ECHILD on a pid of ours means someone else reaped it; in MAINLOOP it only
        #: means the application got there first and will report it.
        self.echild_means_stolen = rules.reaper is not Reaper.APPLICATION
        #: With a child (and no stop watchers) the mode leaves SIGCHLD's disposition
        #: alone, so an ignored SIGCHLD would swallow every exit: refuse at setmode().
        self.refuse_ignored_at_setmode = not self.wants_handler[2]
