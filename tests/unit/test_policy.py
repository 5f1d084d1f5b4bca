"""The per-mode tables of :mod:`childproc._policy`, read as a specification."""

from __future__ import annotations

import ast
import inspect
import itertools
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_the_five_modes() -> None:
    assert [mode.name for mode in SigchldOwner] == [
        "LIBXL",
        "MAINLOOP",
        "LIBXL_ALWAYS",
        "SELECTIVE_REAP",
        "PIDFD",
    ]


# -- rules ---------------------------------------------------------------------


def test_every_mode_has_rules() -> None:
    assert set(RULES) == set(SigchldOwner)
    for mode in SigchldOwner:
        rules = rules_for(mode)
        assert isinstance(rules, ModeRules)
        assert rules is RULES[mode]
        assert rules.app_promise.strip()
        assert rules.use_when.strip()


EXPECTED_HANDLER_AND_REAPER: dict[SigchldOwner, tuple[HandlerPolicy, Reaper]] = {
    SigchldOwner.LIBXL: (HandlerPolicy.WHILE_CHILDREN, Reaper.ANY_CHILD),
    SigchldOwner.MAINLOOP: (HandlerPolicy.NEVER, Reaper.APPLICATION),
    SigchldOwner.LIBXL_ALWAYS: (HandlerPolicy.ALWAYS, Reaper.ANY_CHILD),
    SigchldOwner.SELECTIVE_REAP: (HandlerPolicy.WHERE_PIDFDS_FALL_SHORT, Reaper.OWN_CHILDREN),
    SigchldOwner.PIDFD: (HandlerPolicy.NEVER, Reaper.OWN_CHILDREN),
}


def test_rules_per_mode() -> None:
    assert set(EXPECTED_HANDLER_AND_REAPER) == set(SigchldOwner)
    for mode, (handler, reaper) in EXPECTED_HANDLER_AND_REAPER.items():
        rules = rules_for(mode)
        assert (rules.handler, rules.reaper) == (handler, reaper), mode


#: (app_reports, takes_reaped_callback, pidfd_wakeups, stop_events, deferred_reap, requires_pidfds,
#: orphans_come_back)
EXPECTED_FLAGS: dict[SigchldOwner, tuple[bool, bool, bool, bool, bool, bool, bool]] = {
    SigchldOwner.LIBXL: (False, True, True, True, False, False, False),
    SigchldOwner.MAINLOOP: (True, False, False, True, False, False, False),
    SigchldOwner.LIBXL_ALWAYS: (False, True, True, True, False, False, True),
    SigchldOwner.SELECTIVE_REAP: (False, False, True, True, True, False, False),
    SigchldOwner.PIDFD: (False, False, True, False, True, True, False),
}


def test_expected_flags_cover_every_mode() -> None:
    assert set(EXPECTED_FLAGS) == set(SigchldOwner)


def test_rules_flags_per_mode() -> None:
    for mode in ALL_MODES:
        rules = rules_for(mode)
        flags = (
            rules.app_reports,
            rules.takes_reaped_callback,
            rules.pidfd_wakeups,
            rules.stop_events,
            rules.deferred_reap,
            rules.requires_pidfds,
            rules.orphans_come_back,
        )
        assert flags == EXPECTED_FLAGS[mode], mode


def test_pidfd_mode_is_signal_free() -> None:
    rules = rules_for(SigchldOwner.PIDFD)
    assert rules.handler is HandlerPolicy.NEVER
    assert rules.reaper is Reaper.OWN_CHILDREN
    assert rules.requires_pidfds
    assert not rules.stop_events
    assert rules.deferred_reap
    assert not rules.app_reports
    assert not rules.takes_reaped_callback
    assert rules.pidfd_wakeups


def test_rules_are_frozen() -> None:
    rules = rules_for(SigchldOwner.LIBXL)
    with pytest.raises(AttributeError):
        rules.handler = HandlerPolicy.NEVER  # type: ignore[misc]


def test_rules_are_consistent() -> None:
    for mode in ALL_MODES:
        rules = rules_for(mode)
        # reaped_callback only makes sense where the library reaps pids it did not make.
        assert rules.takes_reaped_callback == (rules.reaper is Reaper.ANY_CHILD), mode
        # Only the application-reaps mode takes childproc_reaped()/sigchld_occurred().
        assert rules.app_reports == (rules.reaper is Reaper.APPLICATION), mode
        # The handler is never installed exactly in MAINLOOP and PIDFD.
        assert (rules.handler is HandlerPolicy.NEVER) == (
            mode in (SigchldOwner.MAINLOOP, SigchldOwner.PIDFD)
        ), mode
        # Pidfds wake the context up exactly where the library reaps.
        assert rules.pidfd_wakeups == (rules.reaper is not Reaper.APPLICATION), mode
        # Reaping after the exit callback needs a reaper that waits on its own pids.
        assert rules.deferred_reap == (rules.reaper is Reaper.OWN_CHILDREN), mode
        # Only the signal-free mode needs pidfds, and only it has no stop/continue events.
        assert rules.requires_pidfds == (mode is SigchldOwner.PIDFD), mode
        assert rules.stop_events == (mode is not SigchldOwner.PIDFD), mode
        # Orphans come back (subreaper) only where every child is reaped for the
        # context's whole life: anywhere else one that came back would stay a zombie.
        if rules.orphans_come_back:
            assert rules.reaper is Reaper.ANY_CHILD and rules.handler is HandlerPolicy.ALWAYS, mode
        # A mode that cannot do without pidfds never needs SIGCHLD.
        if rules.requires_pidfds:
            assert rules.handler is HandlerPolicy.NEVER, mode


# -- wants_handler -------------------------------------------------------------


def expected_wants_handler(
    mode: SigchldOwner, unreaped: int, pidfds_usable: bool, stop_watchers: int
) -> bool:
    """The specification of wants_handler, written out per mode."""
    if mode is SigchldOwner.LIBXL:
        return unreaped > 0
    if mode in (SigchldOwner.MAINLOOP, SigchldOwner.PIDFD):
        return False
    if mode is SigchldOwner.LIBXL_ALWAYS:
        return True
    assert mode is SigchldOwner.SELECTIVE_REAP
    return (not pidfds_usable) or stop_watchers > 0


COUNTS = (0, 1, 2, 1000)


def test_wants_handler_full_product() -> None:
    for mode, unreaped, pidfds, stops in itertools.product(ALL_MODES, COUNTS, BOOLS, COUNTS):
        got = wants_handler(mode, unreaped, pidfds, stops)
        assert got is expected_wants_handler(mode, unreaped, pidfds, stops), (mode, unreaped, pidfds, stops)


@given(
    mode=st.sampled_from(ALL_MODES),
    unreaped=st.integers(min_value=-5, max_value=10**6),
    pidfds=st.booleans(),
    stops=st.integers(min_value=-5, max_value=10**6),
)
@settings(max_examples=300, deadline=None)
def test_wants_handler_any_counts(mode: SigchldOwner, unreaped: int, pidfds: bool, stops: int) -> None:
    got = wants_handler(mode, unreaped, pidfds, stops)
    assert isinstance(got, bool)
    assert got is expected_wants_handler(mode, unreaped, pidfds, stops)


SELECTIVE_REAP_EXAMPLES = [
    # (unreaped, pidfds usable, stop watchers, handler wanted)
    (0, True, 0, False),  # pidfds do everything: no handler
    (5, True, 0, False),
    (5, True, 1, True),  # a child watches stop/continue: pidfds cannot report it
    (0, False, 0, True),  # no pidfds: the SCAN watcher is woken by SIGCHLD
    (5, False, 0, True),
    (5, False, 3, True),
]


def test_wants_handler_selective_reap_examples() -> None:
    for unreaped, pidfds, stops, wanted in SELECTIVE_REAP_EXAMPLES:
        got = wants_handler(SigchldOwner.SELECTIVE_REAP, unreaped, pidfds, stops)
        assert got is wanted, (unreaped, pidfds, stops)


def test_signal_free_modes_never_want_the_handler() -> None:
    for mode in (SigchldOwner.MAINLOOP, SigchldOwner.PIDFD):
        for unreaped, pidfds, stops in itertools.product(COUNTS, BOOLS, COUNTS):
            assert wants_handler(mode, unreaped, pidfds, stops) is False, (mode, unreaped, pidfds, stops)


def test_watchers_woken_by_sigchld_get_the_handler() -> None:
    """Where the library reaps with a SIGCHLD-woken watcher, the handler is wanted
    while there are children; where stop/continue events are offered and the
    library reaps, a stop watcher gets the handler (pidfds do not report stops)."""
    for mode, pidfds in itertools.product(ALL_MODES, BOOLS):
        rules = rules_for(mode)
        if not _possible(mode, pidfds):
            continue  # setmode() refuses: cannot happen
        watcher = choose_watcher(mode, pidfds)
        if watcher in (WatcherKind.WAIT_ANY, WatcherKind.SCAN):
            assert wants_handler(mode, 1, pidfds, 0), (mode, pidfds)
        if rules.stop_events and rules.reaper is not Reaper.APPLICATION:
            assert wants_handler(mode, 1, pidfds, 1), (mode, pidfds)


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
            (_mode, Owner.RETURNED, True): Destination.DROPPED,
            (_mode, Owner.RETURNED, False): Destination.DROPPED,
        }
    )
EXPECTED_ROUTES.update(
    {
        (SigchldOwner.SELECTIVE_REAP, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
        (SigchldOwner.PIDFD, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
        (SigchldOwner.MAINLOOP, Owner.THIS_CONTEXT, False): Destination.CHILD_CALLBACK,
        (SigchldOwner.MAINLOOP, Owner.OTHER_CONTEXT, False): Destination.NOT_OURS,
        (SigchldOwner.MAINLOOP, Owner.NOBODY, False): Destination.NOT_OURS,
        (SigchldOwner.MAINLOOP, Owner.RETURNED, False): Destination.NOT_OURS,
    }
)
ALL_COMBINATIONS = list(itertools.product(ALL_MODES, ALL_OWNERS, BOOLS))
IMPOSSIBLE = [key for key in ALL_COMBINATIONS if key not in EXPECTED_ROUTES]


def test_route_possible() -> None:
    for (mode, owner, has_cb), destination in EXPECTED_ROUTES.items():
        assert route(mode, owner, has_cb) is destination, (mode, owner, has_cb)


def test_route_impossible_raises_keyerror() -> None:
    assert IMPOSSIBLE
    for mode, owner, has_cb in IMPOSSIBLE:
        with pytest.raises(KeyError):
            route(mode, owner, has_cb)


def test_route_impossible_list_is_what_the_spec_says() -> None:
    impossible = set(IMPOSSIBLE)
    # SELECTIVE_REAP and PIDFD only wait on their own pids: they never meet anybody else's.
    for mode in (SigchldOwner.SELECTIVE_REAP, SigchldOwner.PIDFD):
        for owner in (Owner.OTHER_CONTEXT, Owner.NOBODY, Owner.RETURNED):
            for has_cb in BOOLS:
                assert (mode, owner, has_cb) in impossible
    # Modes without reaped_callback never see has_reaped_callback=True.
    for mode in (SigchldOwner.SELECTIVE_REAP, SigchldOwner.MAINLOOP, SigchldOwner.PIDFD):
        for owner in ALL_OWNERS:
            assert (mode, owner, True) in impossible
    assert len(impossible) + len(EXPECTED_ROUTES) == len(ALL_COMBINATIONS)
    # 5 modes x 4 owners x 2 = 40 keys: 8 + 8 (LIBXL, LIBXL_ALWAYS) + 4 (MAINLOOP) + 1 + 1 possible.
    assert len(ALL_COMBINATIONS) == 40
    assert len(EXPECTED_ROUTES) == 22


def test_expected_routes_agree_with_the_rules() -> None:
    # A mode's possible keys follow from its reaper and takes_reaped_callback alone.
    for mode in ALL_MODES:
        rules = rules_for(mode)
        for owner, has_cb in itertools.product(ALL_OWNERS, BOOLS):
            possible = (has_cb is False or rules.takes_reaped_callback) and (
                owner is Owner.THIS_CONTEXT or rules.reaper is not Reaper.OWN_CHILDREN
            )
            assert ((mode, owner, has_cb) in EXPECTED_ROUTES) == possible, (mode, owner, has_cb)


def test_route_mainloop_never_claims_foreign_pids() -> None:
    for owner in (Owner.OTHER_CONTEXT, Owner.NOBODY, Owner.RETURNED):
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


def test_choose_watcher() -> None:
    expected = {
        # mode: (with pidfds, without pidfds)
        SigchldOwner.LIBXL: (WatcherKind.WAIT_ANY, WatcherKind.WAIT_ANY),
        SigchldOwner.LIBXL_ALWAYS: (WatcherKind.WAIT_ANY, WatcherKind.WAIT_ANY),
        SigchldOwner.SELECTIVE_REAP: (WatcherKind.PIDFD, WatcherKind.SCAN),
        SigchldOwner.MAINLOOP: (WatcherKind.NONE, WatcherKind.NONE),
    }
    for mode, (with_pidfd, without_pidfd) in expected.items():
        assert choose_watcher(mode, True) is with_pidfd, mode
        assert choose_watcher(mode, False) is without_pidfd, mode


def test_choose_watcher_pidfd_mode() -> None:
    # PIDFD requires pidfds: with them it reaps through them, without them it has
    # no watcher at all (setmode() refuses the mode first).
    assert choose_watcher(SigchldOwner.PIDFD, True) is WatcherKind.PIDFD
    with pytest.raises(ValueError, match="PIDFD needs pidfds"):
        choose_watcher(SigchldOwner.PIDFD, False)


def _possible(mode: SigchldOwner, pidfds_usable: bool) -> bool:
    return pidfds_usable or not rules_for(mode).requires_pidfds


def test_choose_watcher_raises_exactly_where_pidfds_are_required_and_missing() -> None:
    for mode, usable in itertools.product(ALL_MODES, BOOLS):
        if _possible(mode, usable):
            assert isinstance(choose_watcher(mode, usable), WatcherKind), (mode, usable)
        else:
            with pytest.raises(ValueError):
                choose_watcher(mode, usable)


def test_choose_watcher_depends_only_on_the_reaper() -> None:
    for a, b, usable in itertools.product(ALL_MODES, ALL_MODES, BOOLS):
        if rules_for(a).reaper is rules_for(b).reaper and _possible(a, usable) and _possible(b, usable):
            assert choose_watcher(a, usable) is choose_watcher(b, usable), (a, b, usable)


def test_every_watcher_kind_is_chosen_somewhere() -> None:
    chosen = {
        choose_watcher(mode, usable)
        for mode, usable in itertools.product(ALL_MODES, BOOLS)
        if _possible(mode, usable)
    }
    assert chosen == set(WatcherKind)


# -- purity --------------------------------------------------------------------

# The docstring promises no OS calls. collections.abc is imported for the
# Callable and Mapping annotations only; it is as inert as typing.
ALLOWED_IMPORTS = {"__future__", "enum", "dataclasses", "typing", "collections.abc"}
FORBIDDEN_IMPORTS = {
    "os",
    "signal",
    "select",
    "selectors",
    "threading",
    "subprocess",
    "socket",
    "ctypes",
    "multiprocessing",
    "asyncio",
    "io",
    "sys",
}


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
    assert {name.split(".")[0] for name in imported}.isdisjoint(FORBIDDEN_IMPORTS)


def test_policy_calls_no_io_builtins() -> None:
    forbidden = {"open", "exec", "eval", "compile", "__import__", "print", "input", "globals"}
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in forbidden, f"_policy calls {node.func.id}()"


def test_policy_touches_no_os_names() -> None:
    # No attribute access or bare name reaches a module that does I/O.
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_IMPORTS, f"_policy uses {node.id}"


def test_policy_module_level_names_are_all_pure() -> None:
    # Nothing at module level is a module object (e.g. os, signal smuggled in).
    modules = {name for name, value in vars(_policy).items() if isinstance(value, types.ModuleType)}
    assert modules <= {"enum"}, modules
