"""The fork server's wire protocol (:mod:`childproc._forkserver_wire`): layouts, and
round-trips of every encoder through its decoder. No sockets, no processes."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from childproc import _forkserver_wire as wire
from childproc import forkserver
from childproc._forkserver_wire import WireError

U64 = st.integers(0, 2**64 - 1)
U8 = st.integers(0, 255)
I32 = st.integers(-(2**31), 2**31 - 1)


# -- layouts ------------------------------------------------------------------------------


def test_exit_event_is_two_native_ints_without_padding() -> None:
    assert wire.EXIT_EVENT.format == "=ii"
    assert wire.EXIT_EVENT.size == 8
    assert wire.EXIT_EVENT.pack(1234, 0x0100) == struct.pack("=ii", 1234, 0x0100)
    # the one the public API and the core know is this one
    assert forkserver.EXIT_EVENT is wire.EXIT_EVENT


def test_headers() -> None:
    assert (wire.REQUEST.format, wire.REQUEST.size, wire.REQUEST_SIZE) == ("=QBB", 10, 10)
    assert (wire.REPLY.format, wire.REPLY.size, wire.REPLY_SIZE) == ("=QBBi", 14, 14)
    assert type(wire.REQUEST_SIZE) is int
    assert wire.FD.size == 4


def test_ops_and_flags_are_distinct_plain_ints() -> None:
    ops = [wire.PING, wire.FORK, wire.SPAWN, wire.CONNECT, wire.KILL_ALL, wire.EVAL, wire.STOP]
    ops.append(wire.STOP_SERVER_ONLY)
    assert ops == list(range(1, 9))
    assert all(type(op) is int for op in ops)
    wants = [wire.WANT_SOCKET, wire.WANT_EXIT_FD, wire.WANT_SERVER_CONN]
    has = [wire.HAS_SOCKET, wire.HAS_EXIT_FD, wire.HAS_PIDFD]
    for bits, every in ((wants, wire.FORK_WANTS), (has, wire.HAS_ALL)):
        assert bits == [1, 2, 4]
        assert every == 7
    assert wire.SPAWN_WANTS == wire.WANT_EXIT_FD


def test_socket_constants_are_the_platforms_as_plain_ints() -> None:
    """Plain ints, not socket's IntFlag members (see _fork_server's rule 2)."""
    for name in ("MSG_TRUNC", "MSG_CTRUNC", "MSG_CMSG_CLOEXEC", "SOL_SOCKET", "SCM_RIGHTS"):
        value = getattr(wire, name)
        assert type(value) is int, name
        assert value == int(getattr(socket, name)), name
    assert wire.TRUNCATED == socket.MSG_TRUNC | socket.MSG_CTRUNC
    assert socket.CMSG_LEN(wire.MAX_FDS * 4) == wire.ANCDATA_SIZE


def test_forkserver_keeps_its_public_names() -> None:
    assert forkserver.MAX_FDS == wire.MAX_FDS == 16
    assert forkserver.MAX_PACKET == wire.MAX_PACKET == 64 * 1024
    assert {"EXIT_EVENT", "MAX_FDS", "MAX_PACKET"} <= set(forkserver.__all__)


# -- requests -----------------------------------------------------------------------------


@given(rid=U64, op=U8, flags=U8, body=st.binary(max_size=200))
def test_a_request_round_trips(rid: int, op: int, flags: int, body: bytes) -> None:
    data = wire.encode_request(rid, op, flags, body)
    assert len(data) == wire.REQUEST_SIZE + len(body)
    assert wire.decode_request(data) == (rid, op, flags, body)


def test_a_request_without_a_body_is_its_header() -> None:
    assert wire.encode_request(1, wire.PING) == struct.pack("=QBB", 1, wire.PING, 0)
    assert wire.decode_request(wire.encode_request(1, wire.PING)) == (1, wire.PING, 0, b"")


@pytest.mark.parametrize("data", [b"", b"\x01", b"123456789"])
def test_a_request_shorter_than_its_header_is_refused(data: bytes) -> None:
    with pytest.raises(WireError, match="10-byte header"):
        wire.decode_request(data)


@pytest.mark.parametrize(
    ("rid", "op", "flags"), [(-1, 1, 0), (2**64, 1, 0), (1, 256, 0), (1, 1, -1), (1, 1, 256)]
)
def test_a_request_field_out_of_range_is_refused(rid: int, op: int, flags: int) -> None:
    with pytest.raises(WireError, match="cannot encode a request"):
        wire.encode_request(rid, op, flags)


# -- replies ------------------------------------------------------------------------------


@given(rid=U64, ok=st.booleans(), has=U8, pid=I32, body=st.binary(max_size=200))
def test_a_reply_round_trips(rid: int, ok: bool, has: int, pid: int, body: bytes) -> None:
    data = wire.encode_reply(rid, ok, has, pid, body)
    assert len(data) == wire.REPLY_SIZE + len(body)
    assert wire.decode_reply(data) == (rid, ok, has, pid, body)
    # lost fds are the caller's matter: the reply itself reads the same
    assert wire.decode_reply(data, wire.MSG_CTRUNC) == (rid, ok, has, pid, body)


@pytest.mark.parametrize("data", [b"", b"\x00" * 13])
def test_a_reply_shorter_than_its_header_is_refused(data: bytes) -> None:
    with pytest.raises(WireError, match="shorter than a reply's header"):
        wire.decode_reply(data)


def test_a_reply_cut_short_is_refused() -> None:
    with pytest.raises(WireError, match="longer than the largest reply"):
        wire.decode_reply(wire.encode_reply(1, True), wire.MSG_TRUNC)


def test_a_reply_field_out_of_range_is_refused() -> None:
    with pytest.raises(WireError, match="cannot encode a reply"):
        wire.encode_reply(1, True, 0, 2**31)


def test_wire_errors_are_value_errors() -> None:
    """The client treats every unreadable reply alike (json's errors are ValueErrors)."""
    assert issubclass(WireError, ValueError)


@given(
    rid=U64,
    message=st.text(max_size=60),
    code=st.sampled_from(["FORK_ERROR", "BAD_REQUEST", "NO_ENTRY"]),
    err=st.none() | st.integers(0, 200),
)
def test_an_error_reply_is_a_failed_reply_with_a_json_object(
    rid: int, message: str, code: str, err: int | None
) -> None:
    got_rid, ok, has, pid, body = wire.decode_reply(wire.error_reply(rid, message, code, err))
    assert (got_rid, ok, has, pid) == (rid, False, 0, 0)
    expected = message.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
    assert json.loads(body) == {"error": expected, "code": code, "errno": err}


# -- a fork's or an eval's entry and arguments ----------------------------------------------


@given(
    name=st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),
    args=st.just(b"") | st.binary(min_size=1, max_size=40),
)
def test_a_call_round_trips(name: str, args: bytes) -> None:
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate: refused, see below
    body = wire.encode_call(name, args)
    assert wire.decode_call(body) == (raw, args)


def test_a_call_body_is_the_name_then_a_nul_and_the_arguments() -> None:
    assert wire.encode_call("os:getpid") == b"os:getpid"
    assert wire.encode_call("work", b"[1, 2]") == b"work\x00[1, 2]"
    assert wire.decode_call(b"work") == (b"work", b"")
    assert wire.decode_call(b"work\x00") == (b"work", b"")  # a NUL and no arguments: none
    assert wire.decode_call(b"") == (b"", b"")  # the server refuses an empty name itself


@pytest.mark.parametrize(("name", "match"), [("a\0b", "cannot hold a NUL"), ("bad\udc80", "valid Unicode")])
def test_a_name_that_cannot_travel_is_refused(name: str, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.encode_call(name)


# -- exit records ---------------------------------------------------------------------------


@given(pid=I32, status=I32)
def test_an_exit_event_round_trips(pid: int, status: int) -> None:
    data = wire.encode_exit_event(pid, status)
    assert data == wire.EXIT_EVENT.pack(pid, status)
    assert wire.decode_exit_event(data) == (pid, status)


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00\x00", b"\x00" * 9])
def test_an_exit_event_of_the_wrong_size_is_refused(data: bytes) -> None:
    with pytest.raises(WireError, match="exit record is 8 bytes"):
        wire.decode_exit_event(data)


def test_an_exit_event_out_of_range_is_refused() -> None:
    with pytest.raises(WireError, match="cannot encode an exit record"):
        wire.encode_exit_event(2**31, 0)


# -- fds ------------------------------------------------------------------------------------


@given(fds=st.lists(st.integers(0, 2**31 - 1), max_size=wire.MAX_FDS))
def test_fds_round_trip_through_ancillary_data(fds: list[int]) -> None:
    ancdata = wire.ancdata_for_fds(fds)
    assert ancdata == (
        [] if not fds else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
    )
    assert wire.fds_in_ancdata(ancdata) == fds


def test_fds_in_ancdata_skips_other_messages_and_part_fds() -> None:
    rights = struct.pack("2i", 5, 6)
    ancdata = [
        (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", 1, 2, 3)),
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, rights + b"\x07\x00"),  # a trailing part of an fd
        (socket.IPPROTO_IP, socket.SCM_RIGHTS, struct.pack("i", 9)),
        (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 8)),
    ]
    assert wire.fds_in_ancdata(ancdata) == [5, 6, 8]
    assert wire.fds_in_ancdata([]) == []


def test_too_many_fds_or_a_number_that_is_no_fd_is_refused() -> None:
    with pytest.raises(WireError, match="at most 16 fds"):
        wire.ancdata_for_fds(list(range(wire.MAX_FDS + 1)))
    with pytest.raises(WireError, match="not an fd"):
        wire.ancdata_for_fds([2**31])
