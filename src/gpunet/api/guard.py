"""A pure ASGI middleware between the network and the routers, for hostile input.

- Bodies are capped per route before anything parses them: a ``Content-Length`` over the cap
  answers 413 at once, a chunked body is counted as it streams and refused at the cap.
- A body over a small size is read only once its bearer token is known (401 first): a
  stranger cannot make the coordinator receive megabytes.
- NUL and text that is not UTF-8 are refused (422, naming the field) in JSON bodies, path
  parameters and query strings, since the store would fail on them later; job output (the log
  report's ``chunks[].data``) is let through, to be stored escaped.
- An ``Idempotency-Key`` over 200 characters is refused (422, naming the header).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpunet.core.text import SUSPECT, find_bad_text
from gpunet.errors import GpunetError, Unauthorized
from gpunet.services.runtime import Runtime

UPLOAD_PATH = "/v1/blobs"
LOG_REPORT = re.compile(r"^/v1/agent/attempts/[^/]+/logs$")
# checkpoint objects stream through to the store (never buffered here), each under its own cap
CHECKPOINT_OBJECT = re.compile(r"^/v1/agent/attempts/[^/]+/checkpoints/[^/]+/objects/[^/]+$")
OUTPUT_FIELD = re.compile(r"^chunks\[\d+\]\.data$")
MAX_IDEMPOTENCY_KEY = 200


class _TooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return bytes(v)
    return None


async def send_error(send: Send, status: int, code: str, message: str, field: str | None) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "field": field}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _bad_query(raw: bytes) -> str | None:
    """The name of a query parameter whose name or value holds NUL."""
    if b"%00" not in raw.lower() and b"\x00" not in raw:
        return None
    for k, v in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if "\x00" in k or "\x00" in v:
            return k.replace("\x00", "") or "query"
    return "query"


class BodyGuard:
    """See the module docstring. ``rt`` supplies the settings and the authenticator."""

    def __init__(self, app: ASGIApp, rt: Runtime) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if "\x00" in path:
            await send_error(send, 404, "not_found", "path: must not contain NUL", "path")
            return
        bad = _bad_query(scope.get("query_string", b""))
        if bad:
            await send_error(send, 422, "invalid", f"{bad}: must not contain NUL", bad)
            return
        key = _header(scope, b"idempotency-key")
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
            msg = f"Idempotency-Key: at most {MAX_IDEMPOTENCY_KEY} characters (got {len(key)})"
            await send_error(send, 422, "invalid", msg, "Idempotency-Key")
            return

        settings = self.rt.settings
        if scope.get("method") == "PUT" and CHECKPOINT_OBJECT.match(path):
            await self._stream_object(scope, receive, send, settings.checkpoint_quota_bytes)
            return
        upload = path == UPLOAD_PATH and scope.get("method") == "POST"
        cap = settings.max_upload_bytes if upload else settings.max_body_bytes
        raw_length = _header(scope, b"content-length")
        length = int(raw_length) if raw_length and raw_length.isdigit() else None
        chunked = length is None and _header(scope, b"transfer-encoding") is not None
        if chunked or (length or 0) > settings.auth_before_body_bytes:
            try:
                await self._authenticate(scope)
            except GpunetError as exc:
                await send_error(send, exc.status_code, exc.code, exc.message, exc.field)
                return
        too_large = f"body: the limit for this request is {cap} bytes"
        if length is not None and length > cap:
            await send_error(send, 413, "too_large", f"{too_large} (got {length})", "body")
            return
        if not chunked and not length:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(receive, cap)
        except _TooLarge:
            await send_error(send, 413, "too_large", too_large, "body")
            return
        if not upload:
            fixed = self._check_text(path, body)
            if isinstance(fixed, tuple):
                field, reason = fixed
                await send_error(send, 422, "invalid", f"{field}: {reason}", field)
                return
            if fixed is not None:
                body = fixed
                scope = dict(scope)
                scope["headers"] = [
                    (k, v) for k, v in scope["headers"] if k.lower() != b"content-length"
                ] + [(b"content-length", str(len(body)).encode())]
        await self.app(scope, _replay(body, receive), send)

    async def _stream_object(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """A checkpoint object: authenticated before any byte is read, its declared length
        checked, then passed on as it streams; past the cap the app sees the client leave."""
        try:
            await self._authenticate(scope)
        except GpunetError as exc:
            await send_error(send, exc.status_code, exc.code, exc.message, exc.field)
            return
        raw_length = _header(scope, b"content-length")
        length = int(raw_length) if raw_length and raw_length.isdigit() else None
        if length is not None and length > cap:
            msg = f"body: the limit for a checkpoint object is {cap} bytes (got {length})"
            await send_error(send, 413, "too_large", msg, "body")
            return
        await self.app(scope, _counted(receive, cap), send)

    async def _authenticate(self, scope: Scope) -> None:
        auth = _header(scope, b"authorization") or b""
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a bearer token is required", field="Authorization")
        if self.rt.auth.cached(token.strip()) is None:
            await run_in_threadpool(self.rt.auth.authenticate, token.strip())

    @staticmethod
    async def _read(receive: Receive, cap: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise _TooLarge
            parts.append(chunk)
            if not msg.get("more_body", False):
                break
        return b"".join(parts)

    @staticmethod
    def _check_text(path: str, body: bytes) -> tuple[str, str] | bytes | None:
        """(field, reason) to refuse; new body bytes when only job output needed escaping
        re-encoded; None when the body is fine as it is."""
        valid = body.isascii()
        if not valid:
            try:
                body.decode("utf-8")
                valid = True
            except UnicodeDecodeError:
                pass
        if valid and not SUSPECT.search(body):
            return None  # the common case: nothing to walk
        try:
            obj: Any = json.loads(body.decode("utf-8", "surrogateescape"))
        except ValueError:
            return None  # malformed JSON: the router's parser names the problem
        logs = LOG_REPORT.match(path) is not None
        found = find_bad_text(obj, (lambda p: OUTPUT_FIELD.match(p) is not None) if logs else _no)
        if found:
            return found
        # only job output was odd: hand the router plain JSON (\\udcXX escapes) it can parse
        return None if valid else json.dumps(obj).encode()


def _no(_: str) -> bool:
    return False


def _counted(receive: Receive, cap: int) -> Receive:
    """``receive`` that ends the request as a disconnect once more than ``cap`` bytes came."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        msg = await receive()
        if msg["type"] == "http.request":
            size += len(msg.get("body", b""))
            if size > cap:
                return {"type": "http.disconnect"}
        return msg

    return counted


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
