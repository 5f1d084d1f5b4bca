"""Checking a callback's parameters when it is given, not when it is first called.

A callback with the wrong number of parameters would otherwise raise a bare
``TypeError`` out of ``dispatch()``, far from the call that registered it.
Plain functions and bound methods are checked from their code object (no
``inspect`` on the hot path); other callables through :func:`inspect.signature`
where it can tell, and accepted where it cannot (a C function without a
signature, say).
"""

from __future__ import annotations

import inspect
from types import FunctionType, MethodType

from ._errors import InvalidArgumentError

__all__ = ["check_callback"]

_VARARGS = inspect.CO_VARARGS


def _accepts_from_code(func: FunctionType, n: int) -> bool:
    code = func.__code__
    if code.co_kwonlyargcount > len(func.__kwdefaults__ or {}):
        return False  # a keyword-only parameter without a default
    required = code.co_argcount - len(func.__defaults__ or ())
    if code.co_flags & _VARARGS:
        return required <= n
    return required <= n <= code.co_argcount


def _accepts(callback: object, n: int) -> bool:
    if type(callback) is FunctionType:
        return _accepts_from_code(callback, n)
    if type(callback) is MethodType and type(callback.__func__) is FunctionType:
        return _accepts_from_code(callback.__func__, n + 1)
    try:
        sig = inspect.signature(callback)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True  # cannot tell: let it be
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def check_callback(callback: object, n: int, what: str, usage: str) -> None:
    """Raise :class:`InvalidArgumentError` unless ``callback`` can be called with ``n``
    positional arguments."""
    func, self_arg = callback, 0
    if type(callback) is MethodType:  # a bound method (an adapter's own, on every spawn)
        func, self_arg = callback.__func__, 1
    if type(func) is FunctionType and func.__defaults__ is None and func.__kwdefaults__ is None:
        code = func.__code__  # the common case, a plain function or method: read off its code
        if code.co_argcount == n + self_arg and not code.co_kwonlyargcount:
            return
    if not callable(callback):
        raise InvalidArgumentError(f"{what} must be callable as {usage}, not {callback!r}")
    if not _accepts(callback, n):
        raise InvalidArgumentError(
            f"{what} {callback!r} cannot be called as {usage} ({n} positional arguments): "
            "give a callable that takes exactly those"
        )
