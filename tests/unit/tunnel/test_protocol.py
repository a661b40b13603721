"""The tunnel's framing: every frame survives a round trip; malformed messages are refused."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet.errors import MalformedFrame
from gpunet.tunnel import protocol as p
from gpunet.tunnel.flow import Closed, Credit, Inbox

streams = st.integers(1, p.MAX_STREAM)
latin1 = st.text(st.characters(max_codepoint=255), max_size=40)
headers = st.lists(st.tuples(latin1, latin1), max_size=20).map(tuple)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
paths = st.text(max_size=60).map(lambda s: "/" + s)

opens = st.one_of(
    st.builds(p.Open, streams, st.text(max_size=40), methods, paths, headers, st.booleans()),
    st.builds(  # the whole body inline (version 2)
        p.Open,
        streams,
        st.text(max_size=40),
        methods,
        paths,
        headers,
        st.just(False),
        st.binary(max_size=2048),
    ),
)
frames = st.one_of(
    opens,
    st.builds(p.Data, streams, st.binary(max_size=2048)),
    st.builds(p.End, streams),
    st.builds(p.Response, streams, st.integers(100, 599), headers),
    st.builds(p.Reply, streams, st.integers(100, 599), headers, st.binary(max_size=2048)),
    st.builds(p.Reset, streams, st.text(max_size=100), st.booleans()),
    st.builds(p.Window, streams, st.integers(1, 2**32 - 1)),
)


@given(frames)
def test_every_frame_round_trips(frame: p.Frame) -> None:
    assert p.decode(p.encode(frame)) == frame


@given(frames, st.data())
def test_a_truncated_frame_is_refused(frame: p.Frame, data: st.DataObject) -> None:
    message = p.encode(frame)
    if isinstance(frame, p.Data):
        return  # a DATA frame's payload is the rest of the message: any cut is a shorter chunk
    # nor is an inline body's (OPEN's, REPLY's): cut inside the fields before it
    cut = data.draw(st.integers(0, len(message) - len(_inline(frame)) - 1))
    with pytest.raises(MalformedFrame):
        p.decode(message[:cut])


def _inline(frame: p.Frame) -> bytes:
    """The frame's inline body, the rest of its message (b"": none)."""
    if isinstance(frame, p.Reply):
        return frame.body
    if isinstance(frame, p.Open) and frame.body is not None:
        return frame.body
    return b""


def _ends_in_a_body(frame: p.Frame) -> bool:
    return isinstance(frame, p.Data | p.Reply) or (
        isinstance(frame, p.Open) and frame.body is not None
    )


@given(frames.filter(lambda f: not _ends_in_a_body(f)), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(frame: p.Frame, extra: bytes) -> None:
    with pytest.raises(MalformedFrame, match="after the fields"):
        p.decode(p.encode(frame) + extra)


def test_a_reply_is_status_headers_and_the_whole_body() -> None:
    message = p.encode_reply(9, 201, [("content-type", "text/plain")], b"done")
    assert message[: p.HEADER.size] == p.HEADER.pack(p.Kind.REPLY, 9)
    assert message.endswith(b"done")
    assert p.decode(message) == p.Reply(9, 201, (("content-type", "text/plain"),), b"done")
    assert p.decode(p.encode_reply(9, 204, [], b"")) == p.Reply(9, 204, (), b"")


def test_an_open_carries_its_whole_body_inline_or_says_data_follows() -> None:
    inline = p.decode(p.encode_open(3, "att", "POST", "/v1", [("a", "b")], False, b"{}"))
    assert isinstance(inline, p.Open)
    assert (inline.body, inline.has_body) == (b"{}", False)
    empty = p.decode(p.encode_open(3, "att", "POST", "/v1", [], False, b""))
    assert isinstance(empty, p.Open) and empty.body == b""
    streamed = p.decode(p.encode_open(3, "att", "POST", "/v1", [], True))
    assert isinstance(streamed, p.Open) and (streamed.body, streamed.has_body) == (None, True)
    with pytest.raises(MalformedFrame, match="both inline and in DATA"):
        p.encode_open(3, "att", "POST", "/v1", [], True, b"x")


def test_inline_bodies_are_bounded_both_ways() -> None:
    big = bytes(p.INLINE_MAX + 1)
    with pytest.raises(MalformedFrame, match="inline body"):
        p.encode_reply(1, 200, [], big)
    with pytest.raises(MalformedFrame, match="inline body"):
        p.encode_open(1, "a", "POST", "/", [], False, big)
    fits = p.encode_reply(1, 200, [], bytes(p.INLINE_MAX))
    assert p.decode(fits) == p.Reply(1, 200, (), bytes(p.INLINE_MAX))
    with pytest.raises(MalformedFrame, match="inline body") as info:
        p.decode(fits + b"x")
    assert info.value.field == "body"
    # fields over their bound are refused even where an inline body may follow them
    fat = [("x" * 50, "v" * 250)] * 250  # 76,000 bytes of fields
    opening = b"\x00" + struct.pack("!H", 1) + b"a" + struct.pack("!H", 3) + b"GET"
    opening += struct.pack("!H", 1) + b"/"
    for kind, fields in [
        (p.Kind.REPLY, struct.pack("!H", 200)),
        (p.Kind.OPEN, opening),  # no inline body
        (p.Kind.OPEN, b"\x02" + opening[1:]),  # an empty inline body
    ]:
        raw = p.HEADER.pack(kind, 1) + fields + _raw_headers(fat)
        assert len(raw) - p.HEADER.size > p.MAX_FIELDS
        with pytest.raises(MalformedFrame, match="fields over") as info:
            p.decode(raw)
        assert info.value.field == "headers"


def _raw_headers(headers: list[tuple[str, str]]) -> bytes:
    out = struct.pack("!H", min(len(headers), p.MAX_HEADERS))
    for k, v in headers[: p.MAX_HEADERS]:
        out += struct.pack("!H", len(k)) + k.encode() + struct.pack("!H", len(v)) + v.encode()
    return out


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_malformed_only(message: bytes) -> None:
    try:
        frame = p.decode(message)
    except MalformedFrame:
        return
    assert p.decode(p.encode(frame)) == frame


def test_data_frames_are_the_header_and_the_payload_only() -> None:
    assert p.encode_data(7, b"abc") == bytes([p.Kind.DATA]) + struct.pack("!I", 7) + b"abc"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (b"", "frame"),
        (bytes([p.Kind.END]) + struct.pack("!I", 0), "stream"),  # stream 0
        (bytes([99]) + struct.pack("!I", 1), "kind"),
        (p.HEADER.pack(p.Kind.OPEN, 1) + b"\x04", "flags"),  # unknown flag
        (p.HEADER.pack(p.Kind.OPEN, 1) + b"\x03", "flags"),  # inline and in DATA frames
        (p.HEADER.pack(p.Kind.RESPONSE, 1) + struct.pack("!HH", 700, 0), "status"),
        (p.HEADER.pack(p.Kind.WINDOW, 1) + struct.pack("!I", 0), "credit"),
        (p.HEADER.pack(p.Kind.RESPONSE, 1) + struct.pack("!HH", 200, 1000), "headers"),
        (p.HEADER.pack(p.Kind.RESET, 1) + b"\x00" + struct.pack("!H", 2) + b"\xff\xfe", "reason"),
        (p.HEADER.pack(p.Kind.DATA, 1) + bytes(p.MAX_FRAME), "frame"),
    ],
)
def test_malformed_frames_name_the_field(message: bytes, field: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        p.decode(message)
    assert info.value.field == field


def test_an_open_with_a_bad_method_or_path_is_refused() -> None:
    good = p.encode_open(1, "a", "GET", "/x", (), False)
    bad_method = good.replace(b"GET", b"G T")
    with pytest.raises(MalformedFrame, match="method"):
        p.decode(bad_method)
    with pytest.raises(MalformedFrame, match="path"):
        p.decode(good.replace(b"/x", b"xx"))
    with pytest.raises(MalformedFrame):
        p.encode_open(1, "a", "GET", "no-slash", (), False)


def test_oversized_headers_are_refused_when_encoded() -> None:
    with pytest.raises(MalformedFrame, match="headers"):
        p.encode_open(1, "a", "GET", "/", [("x", "y")] * (p.MAX_HEADERS + 1), False)
    with pytest.raises(MalformedFrame, match="fields of"):
        p.encode_response(1, 200, [("x", "v" * 40_000), ("y", "v" * 40_000)])
    with pytest.raises(MalformedFrame, match="latin-1"):
        p.encode_response(1, 200, [("x", "\u20ac")])
    with pytest.raises(MalformedFrame, match="chunk"):
        p.encode_data(1, bytes(p.MAX_CHUNK + 1))


def test_too_many_headers_are_refused_when_decoded() -> None:
    n = p.MAX_HEADERS + 1
    message = p.HEADER.pack(p.Kind.RESPONSE, 1) + struct.pack("!HH", 200, n) + b"\0\0\0\0" * n
    with pytest.raises(MalformedFrame, match="headers"):
        p.decode(message)


def test_a_long_reset_reason_is_cut_not_refused() -> None:
    frame = p.decode(p.encode_reset(3, "é" * 5000, True))
    assert isinstance(frame, p.Reset) and frame.forwarded
    assert len(frame.reason.encode()) <= p.MAX_REASON


def test_an_inbox_refuses_more_than_its_window_and_keeps_order() -> None:
    async def go() -> None:
        box = Inbox(10)
        assert box.put(b"12345") and box.put(b"678")
        assert not box.put(b"abc")  # 11 > 10
        assert await box.get() == b"12345"
        assert box.put(b"abc")
        box.fail(Closed("gone"))
        assert await box.get() == b"678"  # what arrived before the failure is still read
        assert await box.get() == b"abc"
        with pytest.raises(Closed):
            await box.get()

    asyncio.run(go())


def test_a_sender_waits_for_credit() -> None:
    async def go() -> None:
        credit = Credit(4)
        assert await credit.take(10) == 4
        waiting = asyncio.create_task(credit.take(10))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        credit.grant(6)
        assert await waiting == 6
        later = asyncio.create_task(credit.take(1))
        await asyncio.sleep(0)
        credit.fail(Closed("reset"))
        with pytest.raises(Closed):
            await later

    asyncio.run(go())
