"""Tokens and roles. Tokens are random, shown once, and stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.errors import Forbidden, Unauthorized, ValidationFailed
from gpunet.store.db import Database
from gpunet.store.tables import Account, Token
from gpunet.util import new_id, now


class Role(StrEnum):
    ADMIN = "admin"
    CONSUMER = "consumer"
    PROVIDER = "provider"  # join token: may register agents
    AGENT = "agent"  # one node's own credential, issued at registration


ADMIN_ACCOUNT = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: Role
    account_id: str
    node_id: str | None = None

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


def issue_token(
    session: Session, role: Role, account_name: str, *, name: str = "", node_id: str | None = None
) -> str:
    """Create a token and return it in clear (the only time it is ever seen)."""
    if not account_name.strip():
        raise ValidationFailed("account", "must not be empty")
    acct = _account(session, account_name)
    token = f"gpn_{role.value[:3]}_{secrets.token_urlsafe(24)}"
    session.add(
        Token(
            id=new_id("tok"),
            token_hash=hash_token(token),
            role=role.value,
            account_id=acct.id,
            node_id=node_id,
            name=name,
            created_at=now(),
        )
    )
    return token


def bootstrap_admin(db: Database) -> str | None:
    """Create the first admin token when the store has none; return it, or None."""
    with db.transaction() as s:
        if s.scalar(select(Token.id).where(Token.role == Role.ADMIN.value).limit(1)):
            return None
        return issue_token(s, Role.ADMIN, ADMIN_ACCOUNT, name="bootstrap admin")


class Authenticator:
    """Resolves bearer tokens to principals, with a short cache to keep hot paths cheap."""

    def __init__(self, db: Database, ttl_s: float = 30.0) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str | None) -> Principal | None:
        """The principal from the cache alone (no store access), or None when the token is
        not cached or its entry is older than the TTL. Cheap enough for the event loop."""
        if not token:
            return None
        with self._lock:
            hit = self._cache.get(hash_token(token))
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        return None

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing bearer token (Authorization: Bearer ...)")
        hit = self.cached(token)
        if hit is not None:
            return hit
        h, t = hash_token(token), time.monotonic()
        with self.db.sessions() as s:
            row = s.scalar(select(Token).where(Token.token_hash == h))
        if row is None or row.revoked:
            raise Unauthorized("invalid or revoked token")
        p = Principal(row.id, Role(row.role), row.account_id, row.node_id)
        with self._lock:
            self._cache[h] = (t, p)
        return p
