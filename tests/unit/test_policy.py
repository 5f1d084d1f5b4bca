"""The per-mode tables of :mod:`childproc._policy`, read as a specification."""

from __future__ import annotations

import ast
import inspect
import itertools
import types

import pytest

from childproc import _policy
from childproc._policy import (
    ROUTE,
    RULES,
    Destination,
    HandlerPolicy,
    ModeRules,
    Owner,
    Reaper,
    SigchldOwner,
    WatcherKind,
    choose_watcher,
    route,
    rules_for,
    wants_handler,
)

ALL_MODES = list(SigchldOwner)
ALL_OWNERS = list(Owner)
BOOLS = (False, True)

# -- rules ---------------------------------------------------------------------


def test_every_mode_has_rules() -> None:
    assert set(RULES) == set(SigchldOwner)
    for mode in SigchldOwner:
        rules = rules_for(mode)
        assert isinstance(rules, ModeRules)
        assert rules is RULES[mode]
        assert rules.app_promise.strip()
        assert rules.use_when.strip()


@pytest.mark.parametrize(
    ("mode", "handler", "reaper"),
    [
        (SigchldOwner.LIBXL, HandlerPolicy.WHILE_CHILDREN, Reaper.ANY_CHILD),
        (SigchldOwner.MAINLOOP, HandlerPolicy.NEVER, Reaper.APPLICATION),
        (SigchldOwner.LIBXL_ALWAYS, HandlerPolicy.ALWAYS, Reaper.ANY_CHILD),
        (SigchldOwner.SELECTIVE_REAP, HandlerPolicy.ALWAYS, Reaper.OWN_CHILDREN),
    ],
)
def test_rules_per_mode(mode: SigchldOwner, handler: HandlerPolicy, reaper: Reaper) -> None:
    rules = rules_for(mode)
    assert rules.handler is handler
    assert rules.reaper is reaper


def test_rules_are_frozen() -> None:
    rules = rules_for(SigchldOwner.LIBXL)
    with pytest.raises(AttributeError):
        rules.handler = HandlerPolicy.NEVER  # type: ignore[misc]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_rules_are_consistent(mode: SigchldOwner) -> None:
    rules = rules_for(mode)
    # reaped_callback only makes sense where the library reaps pids it did not make.
    assert rules.takes_reaped_callback == (rules.reaper is Reaper.ANY_CHILD)
    # Only the application-reaps mode takes childproc_reaped()/sigchld_occurred().
    assert rules.app_reports == (rules.reaper is Reaper.APPLICATION)
    # The handler is never installed exactly in MAINLOOP.
    assert (rules.handler is HandlerPolicy.NEVER) == (mode is SigchldOwner.MAINLOOP)
    # Pidfds wake the context up exactly where the library reaps.
    assert rules.pidfd_wakeups == (rules.reaper is not Reaper.APPLICATION)


# -- wants_handler -------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "with_none", "with_some"),
    [
        (SigchldOwner.LIBXL, False, True),
        (SigchldOwner.MAINLOOP, False, False),
        (SigchldOwner.LIBXL_ALWAYS, True, True),
        (SigchldOwner.SELECTIVE_REAP, True, True),
    ],
)
def test_wants_handler(mode: SigchldOwner, with_none: bool, with_some: bool) -> None:
    assert wants_handler(mode, 0) is with_none
    for n in (1, 2, 1000):
        assert wants_handler(mode, n) is with_some


# -- route ---------------------------------------------------------------------

# Every combination that can happen, with its destination. Anything else raises KeyError.
EXPECTED_ROUTES: dict[tuple[SigchldOwner, Owner, bool], Destination] = {}
for _mode in (SigchldOwner.LIBXL, SigchldOwner.LIBXL_ALWAYS):
    EXPECTED_ROUTES.update(
        {
            (_mode, Owner.THIS_CONTEXT, True): Destination.CHILD_CALLBACK,
            (_mode, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
            (_mode, Owner.OTHER_CONTEXT, True): Destination.OTHER_CONTEXT,
            (_mode, Owner.OTHER_CONTEXT, False): Destination.OTHER_CONTEXT,
            (_mode, Owner.NOBODY, True): Destination.REAPED_CALLBACK,
            (_mode, Owner.NOBODY, False): Destination.WARNING,
        }
    )
EXPECTED_ROUTES.update(
    {
        (SigchldOwner.SELECTIVE_REAP, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
        (SigchldOwner.MAINLOOP, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
        (SigchldOwner.MAINLOOP, Owner.OTHER_CONTEXT, False): Destination.NOT_OURS,
        (SigchldOwner.MAINLOOP, Owner.NOBODY, False): Destination.NOT_OURS,
    }
)
ALL_COMBINATIONS = list(itertools.product(ALL_MODES, ALL_OWNERS, BOOLS))
IMPOSSIBLE = [key for key in ALL_COMBINATIONS if key not in EXPECTED_ROUTES]


@pytest.mark.parametrize(("mode", "owner", "has_cb"), sorted(EXPECTED_ROUTES, key=repr))
def test_route_possible(mode: SigchldOwner, owner: Owner, has_cb: bool) -> None:
    assert route(mode, owner, has_cb) is EXPECTED_ROUTES[(mode, owner, has_cb)]


@pytest.mark.parametrize(("mode", "owner", "has_cb"), IMPOSSIBLE)
def test_route_impossible_raises_keyerror(mode: SigchldOwner, owner: Owner, has_cb: bool) -> None:
    with pytest.raises(KeyError):
        route(mode, owner, has_cb)


def test_route_impossible_list_is_what_the_spec_says() -> None:
    impossible = set(IMPOSSIBLE)
    # SELECTIVE_REAP only waits on its own pids: it never meets anybody else's.
    for owner in (Owner.OTHER_CONTEXT, Owner.NOBODY):
        for has_cb in BOOLS:
            assert (SigchldOwner.SELECTIVE_REAP, owner, has_cb) in impossible
    # Modes without reaped_callback never see has_reaped_callback=True.
    for mode in (SigchldOwner.SELECTIVE_REAP, SigchldOwner.MAINLOOP):
        for owner in ALL_OWNERS:
            assert (mode, owner, True) in impossible
    assert len(impossible) + len(EXPECTED_ROUTES) == len(ALL_COMBINATIONS)


def test_route_mainloop_never_claims_foreign_pids() -> None:
    for owner in (Owner.OTHER_CONTEXT, Owner.NOBODY):
        assert route(SigchldOwner.MAINLOOP, owner, False) is Destination.NOT_OURS


def _reachable_route_keys() -> set[tuple[Reaper, Owner, bool]]:
    """The ROUTE keys the RULES allow, derived from the rules alone."""
    keys: set[tuple[Reaper, Owner, bool]] = set()
    for rules in RULES.values():
        callbacks = BOOLS if rules.takes_reaped_callback else (False,)
        owners = [Owner.THIS_CONTEXT] if rules.reaper is Reaper.OWN_CHILDREN else ALL_OWNERS
        keys.update((rules.reaper, owner, has_cb) for owner in owners for has_cb in callbacks)
    return keys


def test_route_table_covers_exactly_the_reachable_keys() -> None:
    assert set(ROUTE) == _reachable_route_keys()


def test_route_table_uses_every_destination() -> None:
    assert set(ROUTE.values()) == set(Destination)


def test_own_children_always_go_to_the_child_callback() -> None:
    for mode in ALL_MODES:
        callbacks = BOOLS if rules_for(mode).takes_reaped_callback else (False,)
        for has_cb in callbacks:
            assert route(mode, Owner.THIS_CONTEXT, has_cb) is Destination.CHILD_CALLBACK


# -- choose_watcher ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "with_pidfd", "without_pidfd"),
    [
        (SigchldOwner.LIBXL, WatcherKind.WAIT_ANY, WatcherKind.WAIT_ANY),
        (SigchldOwner.LIBXL_ALWAYS, WatcherKind.WAIT_ANY, WatcherKind.WAIT_ANY),
        (SigchldOwner.SELECTIVE_REAP, WatcherKind.PIDFD, WatcherKind.SCAN),
        (SigchldOwner.MAINLOOP, WatcherKind.NONE, WatcherKind.NONE),
    ],
)
def test_choose_watcher(mode: SigchldOwner, with_pidfd: WatcherKind, without_pidfd: WatcherKind) -> None:
    assert choose_watcher(mode, True) is with_pidfd
    assert choose_watcher(mode, False) is without_pidfd


def test_every_watcher_kind_is_chosen_somewhere() -> None:
    chosen = {choose_watcher(mode, usable) for mode in ALL_MODES for usable in BOOLS}
    assert chosen == set(WatcherKind)


# -- purity --------------------------------------------------------------------

# The docstring promises no OS calls. collections.abc is imported for the
# Mapping annotation only; it is as inert as typing.
ALLOWED_IMPORTS = {"__future__", "enum", "dataclasses", "typing", "collections.abc"}


def _module_tree() -> ast.Module:
    return ast.parse(inspect.getsource(_policy))


def test_policy_imports_nothing_that_touches_the_os() -> None:
    imported: set[str] = set()
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in _policy"
            assert node.module is not None
            imported.add(node.module)
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


def test_policy_calls_no_io_builtins() -> None:
    forbidden = {"open", "exec", "eval", "compile", "__import__", "print", "input", "globals"}
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in forbidden, f"_policy calls {node.func.id}()"


def test_policy_module_level_names_are_all_pure() -> None:
    # Nothing at module level is a module object (e.g. os, signal smuggled in).
    modules = {name for name, value in vars(_policy).items() if isinstance(value, types.ModuleType)}
    assert modules <= {"enum"}, modules
