"""Run a program with ``posix_spawn``: no copy of the interpreter, cost independent of its size.

glibc's ``posix_spawn`` uses ``clone(CLONE_VM | CLONE_VFORK)``: the parent's
memory is never copied or even mapped again, so spawning from a 4 GiB parent
costs what it costs from a small one, where ``os.fork()`` must copy the page
tables. Python's ``os.posix_spawn`` has no "change directory" action, so a
``cwd`` is honoured by exec'ing ``/bin/sh`` first (one more exec, still
independent of the parent's size). The program and ``cwd`` are checked before
spawning so that the usual mistakes raise; should either vanish in between,
the shell reports it as exit status 127 (or 2 for ``cd``).
"""

from __future__ import annotations

import errno
import os
from _functools import partial  # type: ignore[import-not-found, unused-ignore]  # (no functools here)

from ._errors import ArgumentTypeError, InvalidArgumentError

# Not typing's TYPE_CHECKING, nor signal.py or collections at run time: a fresh fork
# server loads this module, and each of those is memory that every fork copies.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, TypeAlias

    Argv: TypeAlias = Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]]
else:
    try:
        import _signal  # what signal.py wraps
    except ImportError:  # pragma: no cover - not CPython
        import signal as _signal

__all__ = ["DEVNULL", "PIPE", "STDOUT", "prepare_spawn", "refused", "spawn_process"]

# The stdio constants, equal to subprocess's (whose own are therefore accepted), here
# because a fresh fork server loads this module and must not load subprocess.
PIPE = -1
STDOUT = -2
DEVNULL = -3  # and, for type checkers only, Argv

# Python ignores these; a program started by subprocess gets them back at their
# defaults, and so does one started here. SIGCHLD too: an ignored SIGCHLD would
# survive exec and make the program's own children vanish.
_SIGDEF = frozenset(s for s in (_signal.SIGPIPE, getattr(_signal, "SIGXFSZ", None), _signal.SIGCHLD) if s)

_CD_THEN_EXEC = 'cd -- "$1" && shift && exec "$@"'
# A tree's child moves itself into its cgroup before the program can fork (see _cgroup).
_JOIN_THEN_EXEC = 'echo 0 >"$1" && shift && exec "$@"'
_JOIN_CD_THEN_EXEC = 'echo 0 >"$1" && cd -- "$2" && shift 2 && exec "$@"'


def _resolve(name: str, env: Mapping[str, str] | None, cwd: str | None = None) -> str:
    """``name`` as a path to an executable: looked up on ``env``'s PATH (as
    subprocess does) if it has no ``/``; a relative path is taken from ``cwd``
    where one is given (the program runs after the ``cd``). Raises ``OSError``
    (ENOENT, EACCES)."""
    if "/" in name:
        where = os.path.join(cwd, name) if cwd is not None else name
        if not os.path.exists(where):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        if not os.access(where, os.X_OK) or os.path.isdir(where):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), name)
        return name
    # By hand, not shutil.which: shutil imports bz2, and bz2 threading, whose at-fork
    # hook would then run in every child of a fresh fork server.
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = next(
        (
            candidate
            for candidate in (os.path.join(d, name) for d in path.split(os.pathsep))
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK)
        ),
        None,
    )
    if found is None:
        raise OSError(errno.ENOENT, f"{os.strerror(errno.ENOENT)} (not found on PATH)", name)
    return found


def _current_environ() -> Mapping[bytes, bytes]:
    """This process's environment as posix_spawn wants it, without copying it.

    ``os.environ._data`` is the bytes dict behind ``os.environ`` (kept in step by
    ``os.environ``'s own setters); a plain dict is read in C, where the
    ``os.environb`` mapping costs a Python call per variable on every spawn.
    """
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else os.environb


def _fd(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgumentError(f"{what} must be a file descriptor (int >= 0), not {value!r}")
    return value


def _args(argv: Argv) -> list[str | bytes]:
    if isinstance(argv, (str, bytes)) and argv:
        how = (
            f"give [{argv!r}]"
            if not argv.split()[1:]
            else f"give its words as a list (shlex.split), or ['/bin/sh', '-c', {argv!r}] for a shell"
        )
        raise ArgumentTypeError(
            f"argv must be a list of arguments, not the {type(argv).__name__} {argv!r}: {how} "
            "(childproc parses no command lines)"
        )
    if not argv or isinstance(argv, (str, bytes)):
        raise InvalidArgumentError(f"argv must be a non-empty list of arguments, not {argv!r}")
    try:
        args: list[str | bytes] = list(map(os.fspath, argv))  # type: ignore[arg-type]
    except TypeError:
        bad = next(a for a in argv if not isinstance(a, (str, bytes, os.PathLike)))
        raise ArgumentTypeError(
            f"argv items must be str, bytes or os.PathLike, not {type(bad).__name__} ({bad!r}): "
            "convert numbers with str()"
        ) from None
    if _STR.issuperset(map(type, args)) and "\0" not in "".join(args):  # type: ignore[arg-type]
        return args  # the common case, checked in C
    for a in args:
        if ("\0" if isinstance(a, str) else b"\0") in a:  # type: ignore[operator]
            raise InvalidArgumentError(f"argv item {a!r} contains a NUL byte")
    return args


def _check_env(env: Mapping[str, str]) -> None:
    if not callable(getattr(env, "items", None)):
        raise ArgumentTypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    # The common case, all str, checked in C (map, set, join); the slow loop below
    # only finds what to say about a bad one.
    types = set(map(type, env)) | set(map(type, env.values()))
    if types <= _STR and "=" not in "\0".join(env) and "" not in env:
        return
    for key, value in env.items():
        for what, item in (("name", key), ("value", value)):
            if not isinstance(item, (str, bytes)):
                raise ArgumentTypeError(
                    f"env {what}s must be str or bytes, not {type(item).__name__} "
                    f"({key!r}: {value!r}): convert it with str()"
                )
        if not key or ("=" if isinstance(key, str) else b"=") in key:
            raise InvalidArgumentError(f"env name {key!r} is not a valid variable name")


_STR = frozenset({str})


def prepare_spawn(
    argv: Argv,
    *,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    pass_fds: Sequence[int],
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    fd_map: Mapping[int, int] | None = None,
    setsid: bool = False,
    setpgroup: int | None = None,
    cgroup_procs: str | None = None,
) -> Callable[[], int]:
    """Check everything and return the ``posix_spawn`` call itself, as a C-level
    callable taking no argument and returning the pid (a ``functools.partial``
    of ``os.posix_spawn``). ``setsid``/``setpgroup``: a new session, a process
    group (0: a new one led by the child); ``cgroup_procs``: the ``cgroup.procs``
    the child writes itself into before the program starts (through
    ``/bin/sh``). Raises :class:`InvalidArgumentError` (also a ``TypeError`` for
    wrong types) and ``OSError`` (ENOENT, EACCES, ENOTDIR, with ``filename``)
    for a program or ``cwd`` that cannot be used."""
    args = _args(argv)
    if env is not None and type(env) is not dict:
        _check_env(env)  # (a plain dict is checked by posix_spawn itself: see refused())
    actions: list[tuple[Any, ...]] = []
    for fd in pass_fds:
        # dup2 onto itself clears close-on-exec in the child only (glibc >= 2.29),
        # so the parent's fd keeps its flags and no other thread can race us.
        actions.append((os.POSIX_SPAWN_DUP2, _fd(fd, "each of pass_fds"), fd))
    if stdin is not None or stdout is not None or stderr is not None or fd_map:
        actions.extend(_redirections(stdin, stdout, stderr, fd_map, pass_fds))
    name = args[0] if type(args[0]) is str else os.fsdecode(args[0])
    environ = _current_environ() if env is None else env
    group: dict[str, Any] = {}
    if setsid:
        group["setsid"] = True
    if setpgroup is not None:
        group["setpgroup"] = setpgroup
    if cgroup_procs is not None:
        where = None if cwd is None else _cwd(cwd)
        program = _resolve(name, env, where)
        rest = [os.fsdecode(a) for a in args[1:]]
        if where is None:
            args = ["/bin/sh", "-c", _JOIN_THEN_EXEC, "sh", cgroup_procs, program, *rest]
        else:
            args = ["/bin/sh", "-c", _JOIN_CD_THEN_EXEC, "sh", cgroup_procs, where, program, *rest]
        return partial(  # type: ignore[no-any-return, unused-ignore]
            os.posix_spawn,
            "/bin/sh",
            args,
            environ,
            file_actions=actions,
            setsigdef=_SIGDEF,
            setsigmask=(),
            **group,
        )
    if cwd is None and ("/" in name or env is None):
        # posix_spawn itself reports ENOENT/EACCES here, and posix_spawnp looks
        # names up on this process's PATH, which is env's: no pre-checks needed.
        spawn = os.posix_spawn if "/" in name else os.posix_spawnp
        direct: Callable[[], int] = partial(
            spawn, args[0], args, environ, file_actions=actions, setsigdef=_SIGDEF, setsigmask=(), **group
        )
        return direct
    where = None if cwd is None else _cwd(cwd)
    program = _resolve(name, env, where)
    if where is not None:
        args = ["/bin/sh", "-c", _CD_THEN_EXEC, "sh", where, program, *(os.fsdecode(a) for a in args[1:])]
        program = "/bin/sh"
    call: Callable[[], int] = partial(
        os.posix_spawn,
        program,
        args,
        environ,
        file_actions=actions,
        setsigdef=_SIGDEF,
        setsigmask=(),
        **group,
    )
    return call


def _cwd(cwd: str | os.PathLike[str]) -> str:
    """``cwd`` checked: a directory (``OSError`` ENOENT or ENOTDIR otherwise)."""
    where = os.fspath(cwd)
    if not os.path.isdir(where):
        err = errno.ENOTDIR if os.path.exists(where) else errno.ENOENT
        raise OSError(err, os.strerror(err), where)  # (the caller says it was the cwd)
    return where


def _redirections(
    stdin: int | None,
    stdout: int | None,
    stderr: int | None,
    fd_map: Mapping[int, int] | None,
    kept: Sequence[int],
) -> list[tuple[Any, ...]]:
    """File actions putting each source fd at its target (0-2 from ``stdin``,
    ``stdout``, ``stderr``; the rest from ``fd_map``, target -> source).
    :data:`DEVNULL` opens ``/dev/null`` at its target.

    Sources and targets may cross (``stdout=2, stderr=1``; 5->6 and 6->5): a
    source that another action overwrites is first copied to a spare number
    (:func:`_spare_fds`), used from there and closed at the end. Only a crossing
    costs a copy, so a child whose pipes took the last fds the limit allows
    still starts (as ``subprocess``'s does)."""
    moves: dict[int, int] = {}
    opens: list[int] = []
    for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
        if fd == DEVNULL:
            opens.append(target)
        elif fd is not None:
            moves[target] = _fd(fd, "stdin/stdout/stderr")
    if fd_map:
        moves.update(fd_map)
    written = {*opens, *(target for target, source in moves.items() if source != target)}
    crossed = sorted({source for source in moves.values() if source in written})
    spare = _spare_fds(len(crossed), avoid={*written, *moves.values(), *kept}) if crossed else []
    copy = dict(zip(crossed, spare, strict=True))
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, source, copy[source]) for source in crossed]
    for target in opens:
        flags = os.O_RDONLY if target == 0 else os.O_WRONLY
        actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, flags, 0))
    for target, source in moves.items():
        actions.append((os.POSIX_SPAWN_DUP2, copy.get(source, source), target))
    actions.extend((os.POSIX_SPAWN_CLOSE, fd) for fd in spare)
    return actions


def _spare_fds(count: int, avoid: set[int]) -> list[int]:
    """``count`` numbers above 2, none in ``avoid`` and none open here (so the child
    loses no fd it inherits), below the fd limit: ``OSError`` EMFILE if there are
    not so many."""
    limit = os.sysconf("SC_OPEN_MAX")
    found: list[int] = []
    fd = 3
    while len(found) < count:
        if fd >= limit:
            raise OSError(errno.EMFILE, "no fd number free below the limit for the child's stdio")
        if fd not in avoid:
            try:
                os.get_inheritable(fd)  # (open: someone's; leave it)
            except OSError:
                found.append(fd)
        fd += 1
    return found


def refused(exc: TypeError | ValueError, env: Mapping[str, str] | None) -> Exception:
    """The library's error for the ``TypeError`` or ``ValueError`` with which
    ``posix_spawn`` refused its arguments before making any child (a plain dict
    ``env`` is checked there, in C, rather than item by item on every spawn)."""
    try:
        if env is not None:
            _check_env(env)
    except InvalidArgumentError as better:
        return better
    if isinstance(exc, TypeError):
        return ArgumentTypeError(f"posix_spawn refused its arguments: {exc}")
    return InvalidArgumentError(f"posix_spawn refused its arguments: {exc}")


def spawn_process(argv: Argv, **options: Any) -> int:
    """``posix_spawn`` ``argv`` now (options as for :func:`prepare_spawn`); return the
    pid. Raises ``OSError`` (e.g. ENOENT) and :class:`InvalidArgumentError`."""
    call = prepare_spawn(argv, **options)
    try:
        return call()
    except (TypeError, ValueError) as exc:
        raise refused(exc, options.get("env")) from None
