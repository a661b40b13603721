"""Tokens and roles. Tokens are random, shown once, and stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpunet.errors import Forbidden, Unauthorized, ValidationFailed
from gpunet.store.db import Database
from gpunet.store.tables import Account, Token
from gpunet.util import new_id, now, utc, zulu


class Role(StrEnum):
    ADMIN = "admin"
    CONSUMER = "consumer"
    PROVIDER = "provider"  # join token: may register agents
    AGENT = "agent"  # one node's own credential, issued at registration
    SERVICE = "service"  # a service key: calls one service through the gateway, nothing else


ADMIN_ACCOUNT = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: Role
    account_id: str
    node_id: str | None = None
    service_id: str | None = None  # a service key's service

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require(self, *roles: Role) -> None:
        if self.role not in roles and not self.is_admin:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"this needs a token with role {allowed}; yours is {self.role.value}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _account(session: Session, name: str) -> Account:
    acct = session.scalar(select(Account).where(Account.name == name))
    if acct is None:
        acct = Account(id=new_id("acct"), name=name, created_at=now())
        session.add(acct)
        session.flush()
    return acct


def issue(
    session: Session,
    role: Role,
    account_name: str,
    *,
    name: str = "",
    node_id: str | None = None,
    expires_at: datetime | None = None,
    uses_left: int | None = None,
) -> tuple[Token, str]:
    """Create a token (and its account, when new); returns the row and the token in clear
    (the only time it is ever seen)."""
    if not account_name.strip():
        raise ValidationFailed("account", "must not be empty")
    acct = _account(session, account_name)
    token = f"gpn_{role.value[:3]}_{secrets.token_urlsafe(24)}"
    row = Token(
        id=new_id("tok"),
        token_hash=hash_token(token),
        role=role.value,
        account_id=acct.id,
        node_id=node_id,
        name=name,
        created_at=now(),
        expires_at=expires_at,
        uses_left=uses_left,
    )
    session.add(row)
    return row, token


def issue_token(
    session: Session, role: Role, account_name: str, *, name: str = "", node_id: str | None = None
) -> str:
    """Create a token that neither expires nor runs out; return it in clear."""
    return issue(session, role, account_name, name=name, node_id=node_id)[1]


def consume_join_use(session: Session, token_id: str) -> None:
    """Spend one use of a join token that has a use count (one per agent registration).
    The decrement is a single guarded UPDATE, so two agents racing for the last use cannot
    both win."""
    spent = session.execute(
        update(Token)
        .where(Token.id == token_id, Token.uses_left.is_not(None), Token.uses_left > 0)
        .values(uses_left=Token.uses_left - 1)
    )
    if getattr(spent, "rowcount", 0) == 1:
        return
    if session.scalar(select(Token.uses_left).where(Token.id == token_id)) is not None:
        raise Forbidden(
            "join token used up: every use it had registered an agent; create another with "
            "`gpunet tokens create --role provider --account ACCOUNT --uses N`"
        )


def bootstrap_admin(db: Database) -> str | None:
    """Create the first admin token when the store has none; return it, or None."""
    with db.transaction() as s:
        if s.scalar(select(Token.id).where(Token.role == Role.ADMIN.value).limit(1)):
            return None
        return issue_token(s, Role.ADMIN, ADMIN_ACCOUNT, name="bootstrap admin")


class Authenticator:
    """Resolves bearer tokens to principals, with a short cache to keep hot paths cheap.

    A cached entry lives ``ttl_s`` at most and never past its token's expiry; revoking a
    token drops it from the cache (``forget``), so revocation holds from the next request.
    ``last_used_at`` is written on a cache miss, and only when it is ``touch_every_s`` old:
    never a write per request."""

    def __init__(self, db: Database, ttl_s: float = 30.0, touch_every_s: float = 60.0) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.touch_every = timedelta(seconds=touch_every_s)
        self._cache: dict[str, tuple[float, Principal]] = {}  # hash -> (deadline, principal)
        self._forgets = 0  # bumped by forget(): a store read older than that must not cache
        self._lock = threading.Lock()
        # tells the other replicas to drop it too (services.replicas.Bus)
        self.on_forget: Callable[[str], None] | None = None

    def cached(self, token: str | None) -> Principal | None:
        """The principal from the cache alone (no store access), or None when the token is
        not cached or its entry has lapsed. Cheap enough for the event loop."""
        if not token:
            return None
        with self._lock:
            hit = self._cache.get(hash_token(token))
        if hit and time.monotonic() < hit[0]:
            return hit[1]
        return None

    def forget(self, token_hash: str) -> None:
        """Drop a token from the cache: its next request is checked against the store."""
        self.drop(token_hash)
        if self.on_forget is not None:
            self.on_forget(token_hash)

    def drop(self, token_hash: str) -> None:
        """Drop a token from this replica's cache only (another replica revoked it)."""
        with self._lock:
            self._cache.pop(token_hash, None)
            self._forgets += 1

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer ...)")
        hit = self.cached(token)
        if hit is not None:
            return hit
        h, t = hash_token(token), time.monotonic()
        with self._lock:
            forgets = self._forgets
        with self.db.sessions() as s:
            row = s.scalar(select(Token).where(Token.token_hash == h))
        if row is None:
            raise Unauthorized("invalid token")
        if row.revoked:
            at = f" at {zulu(row.revoked_at)}" if row.revoked_at else ""
            raise Unauthorized(f"token revoked{at}")
        at_now, expires = now(), utc(row.expires_at)
        if expires is not None and expires <= at_now:
            raise Unauthorized(f"token expired at {zulu(expires)}")
        last = utc(row.last_used_at)
        if last is None or at_now - last >= self.touch_every:
            with self.db.transaction() as s:
                s.execute(update(Token).where(Token.id == row.id).values(last_used_at=at_now))
        p = Principal(row.id, Role(row.role), row.account_id, row.node_id, row.service_id)
        ttl = self.ttl_s
        if expires is not None:
            ttl = min(ttl, (expires - at_now).total_seconds())
        with self._lock:
            if self._forgets == forgets:  # no revocation raced this read
                self._cache[h] = (t + ttl, p)
        return p
