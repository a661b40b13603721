"""The tunnel's framing: HTTP requests multiplexed over one WebSocket, one binary message per
frame. Pure: bytes in, frames out.

A frame is a 5-byte header, ``kind`` (u8) and ``stream`` id (u32, big-endian, never 0),
then the kind's fields. Strings are a u16 length and UTF-8 (header names and values:
Latin-1, as in HTTP/1.1); a header list is a u16 count and that many name/value pairs.

=========  ==========================  ================================================
kind       direction                   fields
=========  ==========================  ================================================
OPEN       coordinator → agent         flags (bit 0: a body follows in DATA frames;
                                       bit 1: the whole body is inline, the rest of the
                                       message after the headers), attempt id, method,
                                       path with query, headers
DATA       either way                  the rest of the message: a body chunk (no copy
                                       into any other encoding)
END        either way                  none: the body is complete
RESPONSE   agent → coordinator         status (u16), headers
REPLY      agent → coordinator         status (u16), headers, then the whole body (the
                                       rest of the message): RESPONSE, DATA and END in
                                       one message, for an answer complete and small
RESET      either way                  flags (bit 0: the request reached the replica),
                                       reason
WINDOW     either way                  credit (u32): bytes of DATA the sender may add
=========  ==========================  ================================================

An inline body (OPEN's bit 1, REPLY) is at most ``INLINE_MAX`` bytes and counts against no
window: the stream's request or answer is complete in that one message. They are version 2
of the protocol: the agent announces the version it speaks in the handshake's
``X-Gpunet-Tunnel`` header, the coordinator answers with the version both speak, and neither
side sends a frame of a later version than that (an agent or a coordinator that sends no such
header speaks version 1).

Flow control: each side may send ``INITIAL_WINDOW`` bytes of DATA per stream, and more
only as the other side grants them with WINDOW frames once it has consumed what it had,
so neither side ever holds more than a window per stream however slowly its reader reads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from gpunet.errors import MalformedFrame

HEADER = struct.Struct("!BI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

MAX_CHUNK = 256 * 1024  # bytes of body in one DATA frame
MAX_FIELDS = 64 * 1024  # bytes of an OPEN's or a RESPONSE's fields (its headers, mostly)
MAX_HEADERS = 256  # header lines in one OPEN or RESPONSE
MAX_REASON = 1024  # bytes of a RESET's reason (longer reasons are cut when encoded)
MAX_FRAME = HEADER.size + max(MAX_CHUNK, MAX_FIELDS)  # the largest message either side takes
INITIAL_WINDOW = 1024 * 1024  # bytes of DATA a stream may send before any WINDOW frame
INLINE_MAX = 64 * 1024  # bytes of body carried inline by an OPEN or a REPLY
MAX_STREAM = 2**32 - 1
VERSION = 2  # of the frames below that this code speaks (1: no REPLY, no inline OPEN body)
VERSION_HEADER = "X-Gpunet-Tunnel"  # the handshake's header that carries it
REPLACED = 4000  # WebSocket close code: a newer tunnel from the same node took this one's place


class Kind(IntEnum):
    OPEN = 1
    DATA = 2
    END = 3
    RESPONSE = 4
    RESET = 5
    WINDOW = 6
    REPLY = 7


Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Open:
    stream: int
    attempt_id: str
    method: str
    path: str  # with its query string
    headers: Headers
    has_body: bool  # a body follows in DATA frames, then END
    body: bytes | None = None  # the whole body, inline (then has_body is False)


@dataclass(frozen=True, slots=True)
class Data:
    stream: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class End:
    stream: int


@dataclass(frozen=True, slots=True)
class Response:
    stream: int
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole answer in one message: RESPONSE, its body as DATA, END."""

    stream: int
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Reset:
    stream: int
    reason: str
    forwarded: bool  # whether the request reached the replica


@dataclass(frozen=True, slots=True)
class Window:
    stream: int
    credit: int


Frame = Open | Data | End | Response | Reply | Reset | Window


# ---- encoding ---------------------------------------------------------------------------
def _check_stream(stream: int) -> None:
    if not 0 < stream <= MAX_STREAM:
        raise MalformedFrame(f"stream id {stream} is outside 1..{MAX_STREAM}", field="stream")


def _str(value: str, field: str, encoding: str = "utf-8") -> bytes:
    try:
        raw = value.encode(encoding)
    except UnicodeEncodeError:
        raise MalformedFrame(f"{field} is not {encoding} text", field=field) from None
    if len(raw) > 0xFFFF:
        raise MalformedFrame(f"{field} is longer than 65535 bytes", field=field)
    return _U16.pack(len(raw)) + raw


def _headers(headers: Sequence[tuple[str, str]]) -> bytes:
    if len(headers) > MAX_HEADERS:
        raise MalformedFrame(f"more than {MAX_HEADERS} headers", field="headers")
    parts = [_U16.pack(len(headers))]
    for name, value in headers:
        parts.append(_str(name, "headers", "latin-1"))
        parts.append(_str(value, "headers", "latin-1"))
    return b"".join(parts)


def _fields(kind: Kind, stream: int, body: bytes, inline: bytes | None = None) -> bytes:
    _check_stream(stream)
    if len(body) > MAX_FIELDS:
        raise MalformedFrame(f"fields of {len(body)} bytes (at most {MAX_FIELDS})", field="headers")
    if inline is None:
        return HEADER.pack(kind, stream) + body
    if len(inline) > INLINE_MAX:
        raise MalformedFrame(
            f"an inline body of {len(inline)} bytes (at most {INLINE_MAX})", field="body"
        )
    return b"".join((HEADER.pack(kind, stream), body, inline))


def encode_open(
    stream: int,
    attempt_id: str,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    has_body: bool,
    body: bytes | None = None,
) -> bytes:
    """An OPEN frame; ``body`` (at most INLINE_MAX bytes): the whole body, inline (version 2),
    else ``has_body`` says whether DATA frames follow."""
    if body is not None and has_body:
        raise MalformedFrame("a body both inline and in DATA frames", field="flags")
    if not method or not method.isascii() or not method.isalpha():
        raise MalformedFrame(f"method {method!r} is not an HTTP method", field="method")
    if not path.startswith("/"):
        raise MalformedFrame("path must start with /", field="path")
    fields = b"".join(
        (
            bytes((2 if body is not None else 1 if has_body else 0,)),
            _str(attempt_id, "attempt_id"),
            _str(method, "method"),
            _str(path, "path"),
            _headers(headers),
        )
    )
    return _fields(Kind.OPEN, stream, fields, body)


def encode_data(stream: int, payload: bytes) -> bytes:
    """A DATA frame; ``payload`` at most MAX_CHUNK bytes (split longer bodies)."""
    if len(payload) > MAX_CHUNK:
        raise MalformedFrame(f"a chunk of {len(payload)} bytes (at most {MAX_CHUNK})", field="data")
    _check_stream(stream)
    return HEADER.pack(Kind.DATA, stream) + payload


def encode_end(stream: int) -> bytes:
    _check_stream(stream)
    return HEADER.pack(Kind.END, stream)


def encode_response(stream: int, status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    if not 100 <= status <= 599:
        raise MalformedFrame(f"status {status} is outside 100..599", field="status")
    return _fields(Kind.RESPONSE, stream, _U16.pack(status) + _headers(headers))


def encode_reply(
    stream: int, status: int, headers: Sequence[tuple[str, str]], body: bytes
) -> bytes:
    """A REPLY frame (version 2): a whole answer, ``body`` at most INLINE_MAX bytes."""
    if not 100 <= status <= 599:
        raise MalformedFrame(f"status {status} is outside 100..599", field="status")
    return _fields(Kind.REPLY, stream, _U16.pack(status) + _headers(headers), body)


def encode_reset(stream: int, reason: str, forwarded: bool) -> bytes:
    raw = reason.encode("utf-8", "replace")[:MAX_REASON].decode("utf-8", "ignore")
    return _fields(Kind.RESET, stream, bytes((1 if forwarded else 0,)) + _str(raw, "reason"))


def encode_window(stream: int, credit: int) -> bytes:
    if not 0 < credit <= 0xFFFFFFFF:
        raise MalformedFrame(f"credit {credit} is outside 1..{0xFFFFFFFF}", field="credit")
    _check_stream(stream)
    return HEADER.pack(Kind.WINDOW, stream) + _U32.pack(credit)


def encode(frame: Frame) -> bytes:
    """Any frame as its message (the ``encode_*`` functions skip building the object)."""
    match frame:
        case Open():
            f = frame
            return encode_open(
                f.stream, f.attempt_id, f.method, f.path, f.headers, f.has_body, f.body
            )
        case Data():
            return encode_data(frame.stream, frame.payload)
        case End():
            return encode_end(frame.stream)
        case Response():
            return encode_response(frame.stream, frame.status, frame.headers)
        case Reply():
            return encode_reply(frame.stream, frame.status, frame.headers, frame.body)
        case Reset():
            return encode_reset(frame.stream, frame.reason, frame.forwarded)
        case Window():
            return encode_window(frame.stream, frame.credit)
    raise TypeError(f"not a frame: {frame!r}")


# ---- decoding ---------------------------------------------------------------------------
class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int, field: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise MalformedFrame(f"frame ends inside {field}", field=field)
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u16(self, field: str) -> int:
        value: int = _U16.unpack(self.take(2, field))[0]
        return value

    def flags(self, field: str, known: int = 1) -> int:
        b = self.take(1, field)[0]
        if b & ~known:
            raise MalformedFrame(f"unknown flags {b:#x}", field=field)
        return b

    def string(self, field: str, encoding: str = "utf-8") -> str:
        raw = self.take(self.u16(field), field)
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            raise MalformedFrame(f"{field} is not {encoding} text", field=field) from None

    def headers(self) -> Headers:
        n = self.u16("headers")
        if n > MAX_HEADERS:
            raise MalformedFrame(f"{n} headers (at most {MAX_HEADERS})", field="headers")
        # inline rather than 2n calls of string(): every request and answer passes here
        buf, pos, size = self.buf, self.pos, len(self.buf)
        out = []
        for _ in range(n):
            if pos + 2 > size:
                raise MalformedFrame("frame ends inside headers", field="headers")
            end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if end + 2 > size:
                raise MalformedFrame("frame ends inside headers", field="headers")
            vend = end + 2 + ((buf[end] << 8) | buf[end + 1])
            if vend > size:
                raise MalformedFrame("frame ends inside headers", field="headers")
            # latin-1 decodes every byte: no error to catch
            out.append(
                (buf[pos + 2 : end].decode("latin-1"), buf[end + 2 : vend].decode("latin-1"))
            )
            pos = vend
        self.pos = pos
        return tuple(out)

    def bounded(self) -> None:
        """The fields read so far are within MAX_FIELDS (where an inline body may follow)."""
        if self.pos - HEADER.size > MAX_FIELDS:
            raise MalformedFrame(f"fields over {MAX_FIELDS} bytes", field="headers")

    def rest(self) -> bytes:
        """The rest of the message: an inline body."""
        if len(self.buf) - self.pos > INLINE_MAX:
            raise MalformedFrame(f"an inline body over {INLINE_MAX} bytes", field="body")
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out

    def done(self) -> None:
        if self.pos != len(self.buf):
            extra = len(self.buf) - self.pos
            raise MalformedFrame(f"{extra} bytes after the fields", field="frame")


def decode(message: bytes) -> Frame:
    """The frame a message holds; MalformedFrame when it breaks the encoding or a bound."""
    size = len(message)
    if size < HEADER.size:
        raise MalformedFrame(f"a message of {size} bytes has no frame header", field="frame")
    if size > MAX_FRAME:
        raise MalformedFrame(f"a message of {size} bytes (at most {MAX_FRAME})", field="frame")
    kind, stream = HEADER.unpack_from(message)
    if stream == 0:
        raise MalformedFrame("stream id 0", field="stream")
    if kind == Kind.DATA:  # the hot path: no reader, one slice (MAX_FRAME bounds the chunk)
        return Data(stream, message[HEADER.size :])
    if kind not in Kind.__members__.values():
        raise MalformedFrame(f"unknown frame kind {kind}", field="kind")
    if len(message) - HEADER.size > MAX_FIELDS and kind not in (Kind.OPEN, Kind.REPLY):
        raise MalformedFrame(f"fields over {MAX_FIELDS} bytes", field="headers")
    r = _Reader(message, HEADER.size)
    frame: Frame
    if kind == Kind.OPEN:
        flags = r.flags("flags", known=3)
        if flags == 3:
            raise MalformedFrame("a body both inline and in DATA frames", field="flags")
        attempt_id = r.string("attempt_id")
        method = r.string("method")
        if not method or not method.isascii() or not method.isalpha():
            raise MalformedFrame(f"method {method!r} is not an HTTP method", field="method")
        path = r.string("path")
        if not path.startswith("/"):
            raise MalformedFrame("path must start with /", field="path")
        hdrs = r.headers()
        r.bounded()
        body = r.rest() if flags == 2 else None
        frame = Open(stream, attempt_id, method, path, hdrs, flags == 1, body)
    elif kind == Kind.END:
        frame = End(stream)
    elif kind == Kind.RESPONSE:
        status = r.u16("status")
        if not 100 <= status <= 599:
            raise MalformedFrame(f"status {status} is outside 100..599", field="status")
        frame = Response(stream, status, r.headers())
    elif kind == Kind.REPLY:
        status = r.u16("status")
        if not 100 <= status <= 599:
            raise MalformedFrame(f"status {status} is outside 100..599", field="status")
        hdrs = r.headers()
        r.bounded()
        frame = Reply(stream, status, hdrs, r.rest())
    elif kind == Kind.RESET:
        forwarded = r.flags("flags") == 1
        frame = Reset(stream, r.string("reason"), forwarded)
    else:  # WINDOW
        credit: int = _U32.unpack(r.take(4, "credit"))[0]
        if credit == 0:
            raise MalformedFrame("a window of 0 bytes", field="credit")
        frame = Window(stream, credit)
    r.done()
    return frame
