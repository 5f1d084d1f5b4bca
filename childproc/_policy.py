"""Who owns SIGCHLD, who reaps, and where a reaped pid goes, for each mode.

Rules of this file
------------------
* Everything that decides *behaviour per mode* lives here, as tables. Code
  elsewhere asks these tables; it never tests ``mode is ...`` itself.
* This file makes no OS calls, holds no state and knows nothing about threads,
  file descriptors or signals beyond their names. It can be read (and tested)
  as a specification.
* The documentation's mode guide is generated from :data:`RULES` and
  :data:`ROUTE` (see ``docs/conf.py``), so the guide cannot drift from
  the code.

Theory of operation
-------------------
SIGCHLD and ``waitpid(-1)`` are process-wide: whoever reaps with
``waitpid(-1)`` takes *every* child of the process, including the children of
``subprocess`` and of the host's event loop. A library that forks therefore
needs a contract with its host about three things:

1. **The handler**: is the library allowed to install a SIGCHLD handler, and
   when? (:class:`HandlerPolicy`)
2. **The reaper**: who calls ``wait*()``, and on which pids? (:class:`Reaper`)
3. **The route**: when a pid is reaped, who hears about it? Our own children go
   to the callback given to ``child_fork``; a child of another context in the
   same process goes to that context; a child nobody in the library made goes
   to the application's ``reaped_callback`` (or a warning), and only in the
   modes whose reaper takes every child; an orphan of a process-group tree
   that came back to this process (a subreaper, see ``_subreaper``) goes
   nowhere: it is the tree's, not the application's. (:func:`route`)

The four modes are libxl's (``libxl_sigchld_owner_*``):

``LIBXL``
    The library installs its handler while it has unreaped children and reaps
    with ``waitpid(-1, WNOHANG)``. The application promises to have no children
    of its own and no SIGCHLD handler.
``MAINLOOP``
    The library never touches SIGCHLD and never reaps. The application reaps
    and reports every pid with ``childproc_reaped()``, or reaps only its own
    children and calls ``sigchld_occurred()`` so the library checks its own.
``LIBXL_ALWAYS``
    The library's handler is installed from ``setmode()`` until ``close()``;
    the library reaps every child of the process and hands the ones it did not
    make to ``reaped_callback``.
``SELECTIVE_REAP``
    The library only ever waits on the pids it made, so ``subprocess``,
    asyncio and the host's own children keep their statuses. With pidfds it
    needs no handler at all; it installs one only where pidfds fall short
    (the kernel has none, or a child wants stop/continue events, which pidfds
    do not report), and then checks its children one by one (libxl's way).
``PIDFD``
    Not in libxl: the explicit signal-free choice. The library never touches
    SIGCHLD and reaps only its own children, through pidfds, from any thread.
    Needs pidfds (Linux >= 5.3); offers no stop/continue events.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SigchldOwner",
    "HandlerPolicy",
    "ForeignCheck",
    "Reaper",
    "Owner",
    "Destination",
    "WatcherKind",
    "ModeRules",
    "RULES",
    "ROUTE",
    "rules_for",
    "wants_handler",
    "route",
    "choose_watcher",
]


class SigchldOwner(enum.Enum):
    """Who owns SIGCHLD and reaping (libxl's ``libxl_sigchld_owner``)."""

    LIBXL = "libxl"
    MAINLOOP = "mainloop"
    LIBXL_ALWAYS = "libxl_always"
    SELECTIVE_REAP = "selective_reap"
    PIDFD = "pidfd"


class HandlerPolicy(enum.Enum):
    """When the library's process-wide SIGCHLD handler is installed for a context."""

    NEVER = "never"
    WHILE_CHILDREN = "while the context has unreaped children"
    ALWAYS = "from setmode() until close()"
    WHERE_PIDFDS_FALL_SHORT = "only without pidfds, or while a child watches stop/continue"


class Reaper(enum.Enum):
    """Who calls ``wait*()`` and on which pids."""

    APPLICATION = "the application (reports with childproc_reaped)"
    ANY_CHILD = "the library, waitpid(-1): every child of the process"
    OWN_CHILDREN = "the library, only the pids it made"


class Owner(enum.Enum):
    """Whose pid a reaped pid is, seen from the context that reaped it."""

    __hash__ = object.__hash__  # singletons: an identity hash, in C (a plan's route is keyed by it)

    THIS_CONTEXT = "this context"
    OTHER_CONTEXT = "another childproc context"
    NOBODY = "no childproc context"
    #: Seen as a zombie in the group of a process-group tree this subreaper process
    #: tracks (see ``_subreaper``): an orphan of that tree that came back here.
    RETURNED = "an orphan of a process-group tree, come back to this subreaper"


class Destination(enum.Enum):
    """Where a reaped pid goes."""

    CHILD_CALLBACK = "the callback given to child_fork"
    OTHER_CONTEXT = "handed to the context that forked it"
    REAPED_CALLBACK = "the application's reaped_callback"
    WARNING = "a warning on logger 'childproc'"
    NOT_OURS = "childproc_reaped() returns False"
    DROPPED = "nobody: logged at debug level on logger 'childproc' (the tree's, not the host's)"


class WatcherKind(enum.Enum):
    """The mechanism that finds and reaps children (one module each in ``_watchers``)."""

    WAIT_ANY = "waitpid(-1, WNOHANG) loop, woken by the SIGCHLD self-pipe"
    PIDFD = "waitid(P_PIDFD) on the pidfds that became readable"
    SCAN = "waitpid(pid, WNOHANG) for each own child, woken by SIGCHLD"
    NONE = "no library reaping: the application reports"


class ForeignCheck(enum.Enum):
    """When a mode that reaps by ``waitpid(-1)`` looks for children it would steal."""

    NEVER = "never (the mode never reaps a pid it did not make)"
    FIRST_CHILD = "before its first child (each time it goes from none to one)"
    SETMODE = "at setmode() (children the app makes later are its to report)"


@dataclass(frozen=True)
class ModeRules:
    """What one mode promises and demands."""

    handler: HandlerPolicy
    reaper: Reaper
    #: ``childproc_reaped()`` and ``sigchld_occurred()`` may be called.
    app_reports: bool
    #: ``Hooks.reaped_callback`` is meaningful (only where foreign pids get reaped).
    takes_reaped_callback: bool
    #: The context's pidfds are wake-up sources for ``fileno()``/``wait()``.
    pidfd_wakeups: bool
    #: Children may ask for stop/continue events (these need SIGCHLD).
    stop_events: bool
    #: Children may ask to be reaped only after their exit callback (the
    #: zombie stays readable in /proc meanwhile): only reapers of their own pids.
    deferred_reap: bool
    #: The mode cannot work without pidfds (setmode() raises where there are none).
    requires_pidfds: bool
    #: A process-group tree (``kill_tree=True`` without cgroups) makes the process a
    #: subreaper, so the tree's orphans come back to be reaped here: only where the
    #: mode reaps every child of the process for the context's whole life (anywhere
    #: else an orphan that came back would stay a zombie). See ``_subreaper``.
    orphans_come_back: bool
    #: When to refuse to start while the process has children no context made
    #: (the mode would reap them and their owners would see returncode 0).
    foreign_children_check: ForeignCheck
    #: What the application must promise, in a sentence (for the docs and errors).
    app_promise: str
    #: Which hosts this mode is for, in a sentence (for the docs).
    use_when: str


RULES: Final[Mapping[SigchldOwner, ModeRules]] = {
    SigchldOwner.LIBXL: ModeRules(
        handler=HandlerPolicy.WHILE_CHILDREN,
        reaper=Reaper.ANY_CHILD,
        app_reports=False,
        takes_reaped_callback=True,
        pidfd_wakeups=True,
        stop_events=True,
        deferred_reap=False,
        requires_pidfds=False,
        orphans_come_back=False,
        foreign_children_check=ForeignCheck.FIRST_CHILD,
        app_promise="no children of its own and no SIGCHLD handler",
        use_when="a program whose only children are childproc's",
    ),
    SigchldOwner.MAINLOOP: ModeRules(
        handler=HandlerPolicy.NEVER,
        reaper=Reaper.APPLICATION,
        app_reports=True,
        takes_reaped_callback=False,
        pidfd_wakeups=False,
        stop_events=True,
        deferred_reap=False,
        requires_pidfds=False,
        orphans_come_back=False,
        foreign_children_check=ForeignCheck.NEVER,
        app_promise=(
            "to reap childproc's children and report each with childproc_reaped(), "
            "or to call sigchld_occurred() on every SIGCHLD"
        ),
        use_when="a host that owns SIGCHLD, reaps and reports (its own loop, a C library)",
    ),
    SigchldOwner.LIBXL_ALWAYS: ModeRules(
        handler=HandlerPolicy.ALWAYS,
        reaper=Reaper.ANY_CHILD,
        app_reports=False,
        takes_reaped_callback=True,
        pidfd_wakeups=True,
        stop_events=True,
        deferred_reap=False,
        requires_pidfds=False,
        orphans_come_back=True,
        foreign_children_check=ForeignCheck.SETMODE,
        app_promise="no SIGCHLD handler, and to take its own children's statuses from reaped_callback",
        use_when="a program that wants childproc to reap all of its children",
    ),
    SigchldOwner.SELECTIVE_REAP: ModeRules(
        handler=HandlerPolicy.WHERE_PIDFDS_FALL_SHORT,
        reaper=Reaper.OWN_CHILDREN,
        app_reports=False,
        takes_reaped_callback=False,
        pidfd_wakeups=True,
        stop_events=True,
        deferred_reap=True,
        requires_pidfds=False,
        orphans_come_back=False,
        foreign_children_check=ForeignCheck.NEVER,
        app_promise=(
            "never to reap childproc's children (no waitpid(-1) anywhere in the process); "
            "where pidfds fall short, no SIGCHLD handler of its own"
        ),
        use_when="a host with subprocess, asyncio or its own children beside childproc",
    ),
    SigchldOwner.PIDFD: ModeRules(
        handler=HandlerPolicy.NEVER,
        reaper=Reaper.OWN_CHILDREN,
        app_reports=False,
        takes_reaped_callback=False,
        pidfd_wakeups=True,
        stop_events=False,
        deferred_reap=True,
        requires_pidfds=True,
        orphans_come_back=False,
        foreign_children_check=ForeignCheck.NEVER,
        app_promise="never to reap childproc's children (no waitpid(-1) anywhere in the process)",
        use_when=(
            "any host, from any thread, where SIGCHLD must stay untouched "
            "(uvloop, a host that owns SIGCHLD but does not report)"
        ),
    ),
}

#: Where a reaped pid goes: by the reaper of the context that reaped it (or was
#: told about it), whose pid it is, and whether the application gave a
#: ``reaped_callback``. A missing key is a combination that cannot happen: a
#: reaper that only waits on its own pids never meets anybody else's.
ROUTE: Final[Mapping[tuple[Reaper, Owner, bool], Destination]] = {
    (Reaper.ANY_CHILD, Owner.THIS_CONTEXT, True): Destination.CHILD_CALLBACK,
    (Reaper.ANY_CHILD, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
    (Reaper.ANY_CHILD, Owner.OTHER_CONTEXT, True): Destination.OTHER_CONTEXT,
    (Reaper.ANY_CHILD, Owner.OTHER_CONTEXT, False): Destination.OTHER_CONTEXT,
    (Reaper.ANY_CHILD, Owner.NOBODY, True): Destination.REAPED_CALLBACK,
    (Reaper.ANY_CHILD, Owner.NOBODY, False): Destination.WARNING,
    (Reaper.ANY_CHILD, Owner.RETURNED, True): Destination.DROPPED,
    (Reaper.ANY_CHILD, Owner.RETURNED, False): Destination.DROPPED,
    (Reaper.OWN_CHILDREN, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
    # childproc_reaped() answers for its own context only, as libxl's does: an
    # application with several contexts reports a pid to each until one says True.
    (Reaper.APPLICATION, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
    (Reaper.APPLICATION, Owner.OTHER_CONTEXT, False): Destination.NOT_OURS,
    (Reaper.APPLICATION, Owner.NOBODY, False): Destination.NOT_OURS,
    (Reaper.APPLICATION, Owner.RETURNED, False): Destination.NOT_OURS,
}

#: Whether the handler is wanted, by policy and by which of these holds:
#: (the context has unreaped children, pidfds are usable, a child watches stop/continue).
_HANDLER_WANTED: Final[Mapping[HandlerPolicy, Callable[[bool, bool, bool], bool]]] = {
    HandlerPolicy.NEVER: lambda children, pidfds, stops: False,
    HandlerPolicy.WHILE_CHILDREN: lambda children, pidfds, stops: children,
    HandlerPolicy.ALWAYS: lambda children, pidfds, stops: True,
    HandlerPolicy.WHERE_PIDFDS_FALL_SHORT: lambda children, pidfds, stops: not pidfds or stops,
}

_WATCHER: Final[Mapping[tuple[Reaper, bool], WatcherKind]] = {
    # (reaper, pidfds usable) -> watcher
    (Reaper.ANY_CHILD, True): WatcherKind.WAIT_ANY,
    (Reaper.ANY_CHILD, False): WatcherKind.WAIT_ANY,
    (Reaper.OWN_CHILDREN, True): WatcherKind.PIDFD,
    (Reaper.OWN_CHILDREN, False): WatcherKind.SCAN,
    (Reaper.APPLICATION, True): WatcherKind.NONE,
    (Reaper.APPLICATION, False): WatcherKind.NONE,
}


def rules_for(mode: SigchldOwner) -> ModeRules:
    """The rules of ``mode``."""
    return RULES[mode]


def wants_handler(
    mode: SigchldOwner, unreaped_children: int, pidfds_usable: bool, stop_watchers: int
) -> bool:
    """Whether a context in ``mode`` needs the SIGCHLD handler now.

    ``unreaped_children``: children not reaped yet; ``pidfds_usable``: the kernel
    gives pidfds; ``stop_watchers``: children that asked for stop/continue events.
    """
    wanted = _HANDLER_WANTED[RULES[mode].handler]
    return wanted(unreaped_children > 0, pidfds_usable, stop_watchers > 0)


def route(mode: SigchldOwner, owner: Owner, has_reaped_callback: bool) -> Destination:
    """Where a pid reaped by (or reported to) a context in ``mode`` goes.

    Raises :class:`KeyError` for a combination that cannot happen.
    """
    return ROUTE[(RULES[mode].reaper, owner, has_reaped_callback)]


def choose_watcher(mode: SigchldOwner, pidfds_usable: bool) -> WatcherKind:
    """The watcher a context in ``mode`` reaps with.

    Raises :class:`ValueError` for a mode that needs pidfds when there are none.
    """
    if RULES[mode].requires_pidfds and not pidfds_usable:
        raise ValueError(f"{mode.name} needs pidfds")
    return _WATCHER[(RULES[mode].reaper, pidfds_usable)]
