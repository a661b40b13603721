"""Dashboard sessions: a random id in an HttpOnly cookie, the token it stands for in memory.

The token itself never leaves the server after sign-in: the cookie holds only the session id
(HttpOnly, SameSite=Strict, Secure over https). Every request still resolves the token through
the coordinator's authenticator, so a revoked or expired token ends its session at once.
Sessions live in the coordinator's memory: a restart signs everybody out.

State-changing requests carry the session's CSRF token in a form field and, when the browser
sends one, an ``Origin`` naming this host; sign-in (no session yet) checks the origin.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

COOKIE = "gpunet_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    """Session id -> the signed-in token, for at most ``ttl_s`` each."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, token: str) -> str:
        """Start a session for ``token``; returns its id (the cookie's value)."""
        sid = secrets.token_urlsafe(32)
        at = time.monotonic()
        with self._lock:
            if len(self._by_id) >= MAX_SESSIONS:
                self._by_id = {k: v for k, v in self._by_id.items() if v.expires > at}
                while len(self._by_id) >= MAX_SESSIONS:  # still full: drop the oldest
                    self._by_id.pop(next(iter(self._by_id)))
            self._by_id[sid] = Session(token, secrets.token_urlsafe(24), at + self.ttl_s)
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is not None and s.expires <= time.monotonic():
                del self._by_id[sid]
                return None
        return s

    def close(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_id.pop(sid, None)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site. A missing ``Origin``
    passes: browsers send it on every cross-site POST, and the CSRF token still has to match."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin != "null" and urlsplit(origin).netloc == host


def csrf_ok(session: Session, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf, sent or "")


def secure(request: Request) -> bool:
    """Whether the cookie must be Secure: the dashboard was reached over https."""
    return request.url.scheme == "https"
