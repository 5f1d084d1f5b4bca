"""Checking a callback's arity when it is given: :func:`childproc._signature.check_callback`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import MethodType
from typing import Any

import pytest

from childproc._errors import InvalidArgumentError
from childproc._signature import check_callback

USAGE = "callback(pid, status)"


def accepts(callback: object, n: int = 2) -> bool:
    try:
        check_callback(callback, n, "reaped_callback", USAGE)
    except InvalidArgumentError:
        return False
    return True


def calls_with(callback: Callable[..., object], n: int) -> bool:
    """What actually calling ``callback`` with ``n`` positional arguments does."""
    try:
        inspect.signature(callback).bind(*range(n))
    except TypeError:
        return False
    return True


# -- plain functions -------------------------------------------------------------------


def two(pid: int, status: int) -> None:
    pass


def one(pid: int) -> None:
    pass


def three(pid: int, status: int, extra: int) -> None:
    pass


def none() -> None:
    pass


def with_default(pid: int, status: int = 0) -> None:
    pass


def all_defaults(pid: int = 0, status: int = 0, extra: int = 0) -> None:
    pass


def star_args(*args: int) -> None:
    pass


def one_then_star(pid: int, *args: int) -> None:
    pass


def three_then_star(a: int, b: int, c: int, *args: int) -> None:
    pass


def default_then_star(pid: int, status: int = 0, *args: int) -> None:
    pass


def star_kwargs(pid: int, status: int, **kwargs: int) -> None:
    pass


def kwonly_default(pid: int, status: int, *, flag: bool = False) -> None:
    pass


def kwonly_required(pid: int, status: int, *, flag: bool) -> None:
    pass


def positional_only(pid: int, status: int, /) -> None:
    pass


@pytest.mark.parametrize(
    ("func", "ok"),
    [
        (two, {2}),
        (one, {1}),
        (three, {3}),
        (none, {0}),
        (with_default, {1, 2}),
        (all_defaults, {0, 1, 2, 3}),
        (star_args, {0, 1, 2, 3, 4}),
        (one_then_star, {1, 2, 3, 4}),
        (three_then_star, {3, 4}),
        (default_then_star, {1, 2, 3, 4}),
        (star_kwargs, {2}),
        (kwonly_default, {2}),
        (kwonly_required, set()),
        (positional_only, {2}),
    ],
    ids=lambda v: getattr(v, "__name__", repr(v)),
)
def test_plain_functions(func: Callable[..., object], ok: set[int]) -> None:
    for n in range(5):
        assert accepts(func, n) is (n in ok), n
        assert calls_with(func, n) is (n in ok), n  # the test's own expectation is right


def test_lambdas() -> None:
    assert accepts(lambda pid, status: None)
    assert not accepts(lambda pid: None)
    assert not accepts(lambda: None)
    assert accepts(lambda *a: None)
    assert accepts(lambda pid, status, extra=None: None)
    assert not accepts(lambda pid, status, *, extra: None)


def test_required_keyword_only_beside_a_defaulted_one_is_refused() -> None:
    def func(pid: int, status: int, *, needed: int, optional: int = 0) -> None:
        pass

    assert not calls_with(func, 2)
    assert not accepts(func)


def test_required_keyword_only_after_star_args_is_refused() -> None:
    def func(*args: int, needed: int) -> None:
        pass

    assert not calls_with(func, 2)
    assert not accepts(func)


def test_keyword_only_with_defaults_after_star_args_is_accepted() -> None:
    def func(*args: int, optional: int = 0) -> None:
        pass

    assert accepts(func)


# -- methods ----------------------------------------------------------------------------


class Owner:
    def method(self, pid: int, status: int) -> None:
        pass

    def short_method(self, pid: int) -> None:
        pass

    def star_method(self, *args: int) -> None:
        pass

    def kwonly_method(self, pid: int, status: int, *, flag: bool) -> None:
        pass

    @classmethod
    def class_method(cls, pid: int, status: int) -> None:
        pass

    @staticmethod
    def static_method(pid: int, status: int) -> None:
        pass

    @staticmethod
    def short_static(pid: int) -> None:
        pass


def test_bound_methods_do_not_count_self() -> None:
    owner = Owner()
    assert accepts(owner.method)
    assert not accepts(owner.method, 3)
    assert not accepts(owner.short_method)
    assert accepts(owner.short_method, 1)
    assert accepts(owner.star_method, 0)
    assert accepts(owner.star_method, 5)
    assert not accepts(owner.kwonly_method)


def test_unbound_method_counts_self() -> None:
    assert not accepts(Owner.method)
    assert accepts(Owner.method, 3)


def test_classmethods_and_staticmethods() -> None:
    assert accepts(Owner.class_method)
    assert accepts(Owner().class_method)
    assert not accepts(Owner.class_method, 3)
    assert accepts(Owner.static_method)
    assert accepts(Owner().static_method)
    assert not accepts(Owner.short_static)
    # The staticmethod object itself (callable since Python 3.10).
    raw = Owner.__dict__["static_method"]
    assert isinstance(raw, staticmethod)
    assert accepts(raw)
    assert not accepts(raw, 1)


def test_method_bound_by_hand_to_a_function_without_parameters() -> None:
    # MethodType passes the instance first: a function taking nothing cannot be called so.
    bound = MethodType(none, object())
    assert not accepts(bound, 0)
    with pytest.raises(TypeError):
        bound()
    bound_one = MethodType(one, object())
    assert accepts(bound_one, 0)


def test_method_bound_to_a_non_function_callable() -> None:
    class Callee:
        def __call__(self, first: object, pid: int, status: int) -> None:
            pass

    bound = MethodType(Callee(), object())
    assert accepts(bound)
    assert not accepts(bound, 3)


# -- other callables ---------------------------------------------------------------------


class CallableTwo:
    def __call__(self, pid: int, status: int) -> None:
        pass


class CallableOne:
    def __call__(self, pid: int) -> None:
        pass


class CallableAny:
    def __call__(self, *args: Any) -> None:
        pass


class Constructed:
    def __init__(self, pid: int, status: int) -> None:
        self.pid = pid


def test_instances_with_call() -> None:
    assert accepts(CallableTwo())
    assert not accepts(CallableTwo(), 1)
    assert not accepts(CallableOne())
    assert accepts(CallableOne(), 1)
    assert accepts(CallableAny(), 0)
    assert accepts(CallableAny(), 7)


def test_classes_are_checked_through_their_constructor() -> None:
    assert accepts(Constructed)
    assert not accepts(Constructed, 1)
    assert not accepts(CallableTwo)  # its instances take two; the class itself takes none
    assert accepts(CallableTwo, 0)


def test_partials() -> None:
    assert accepts(functools.partial(three, 1))
    assert not accepts(functools.partial(three, 1, 2))
    assert accepts(functools.partial(three, 1, 2), 1)
    assert accepts(functools.partial(two))
    assert accepts(functools.partial(three, extra=3))
    assert not accepts(functools.partial(two, 1, 2))
    assert accepts(functools.partial(star_args, 1, 2, 3))


def test_builtins() -> None:
    assert accepts(divmod)  # (x, y, /): known
    assert not accepts(divmod, 3)
    assert accepts(print)
    # No signature known: accepted, whatever n is.
    for func in (min, max, getattr, vars):
        with pytest.raises(ValueError):
            inspect.signature(func)
        assert accepts(func)
        assert accepts(func, 0)


def test_dict_setdefault() -> None:
    store: dict[int, int] = {}
    assert accepts(store.setdefault)  # (key, default=None, /)
    assert accepts(store.setdefault, 1)
    assert not accepts(store.setdefault, 3)
    assert not accepts(store.setdefault, 0)
    assert accepts(dict.setdefault, 3)  # unbound: self, key, default
    assert not accepts(dict.setdefault, 1)


@pytest.mark.parametrize(
    "value", [None, 0, 42, "callback", b"x", (two,), [two], {"pid": 1}, object()], ids=repr
)
def test_non_callables(value: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_callback(value, 2, "reaped_callback", USAGE)
    message = str(info.value)
    assert "reaped_callback" in message
    assert USAGE in message
    assert "callable" in message


def test_the_error_names_the_callback_and_the_usage() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_callback(one, 2, "on_event", "on_event(child, event)")
    message = str(info.value)
    assert "on_event" in message
    assert "on_event(child, event)" in message
    assert repr(one) in message
    assert "2 positional arguments" in message


def test_invalid_argument_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_callback(None, 2, "on_event", "on_event(child, event)")


def test_accepted_returns_none() -> None:
    assert check_callback(two, 2, "on_event", USAGE) is None  # type: ignore[func-returns-value]
