"""Token management: create (with an expiry and a use count), list, revoke.

The secret is shown once, at creation; listings never carry it, nor its hash."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.core.durations import parse_duration
from gpunet.errors import Conflict, Forbidden, NotFound, ValidationFailed
from gpunet.services.accounts import account_by_name
from gpunet.services.auth import Authenticator, Principal, Role, issue
from gpunet.store.db import Database
from gpunet.store.tables import Account, Token
from gpunet.util import iso, now, utc


def token_state(t: Token, at: datetime) -> str:
    """revoked | expired | used up | live (a used-up join token still authenticates; it only
    registers no more agents)."""
    if t.revoked:
        return "revoked"
    exp = utc(t.expires_at)
    if exp is not None and exp <= at:
        return "expired"
    if t.uses_left is not None and t.uses_left <= 0:
        return "used up"
    return "live"


def _view(t: Token, account: str, at: datetime) -> dict[str, Any]:
    return {
        "id": t.id,
        "role": t.role,
        "account": account,
        "name": t.name,
        "node_id": t.node_id,
        "created_at": iso(t.created_at),
        "expires_at": iso(t.expires_at),
        "uses_left": t.uses_left,
        "last_used_at": iso(t.last_used_at),
        "revoked": t.revoked,
        "revoked_at": iso(t.revoked_at),
        "state": token_state(t, at),
    }


def create_token(
    db: Database,
    who: Principal,
    role: Role,
    account: str,
    *,
    name: str = "",
    expires: str | None = None,
    uses: int | None = None,
) -> dict[str, Any]:
    """Issue a token (admin only); ``expires`` is a duration such as ``30d`` and ``uses`` the
    number of agents a join (provider) token may register."""
    who.require(Role.ADMIN)
    if role is Role.AGENT:
        raise ValidationFailed("role", "agent tokens are issued at registration")
    if role is Role.SERVICE:
        raise ValidationFailed("role", "service keys are created with POST /v1/services/NAME/keys")
    if uses is not None and role is not Role.PROVIDER:
        raise ValidationFailed("uses", "only join (provider) tokens have a use count")
    if uses is not None and uses < 1:
        raise ValidationFailed("uses", "must be at least 1")
    at = now()
    expires_at = at + parse_duration(expires, "expires") if expires is not None else None
    with db.transaction() as s:
        row, token = issue(s, role, account, name=name, expires_at=expires_at, uses_left=uses)
        s.flush()
        return {"token": token, **_view(row, account, at)}


def _may_manage(who: Principal) -> None:
    if who.role in (Role.AGENT, Role.SERVICE):
        raise Forbidden(f"a token of role {who.role.value} may not manage tokens")


def list_tokens(db: Database, who: Principal, account: str | None = None) -> list[dict[str, Any]]:
    """Every token (an admin, or one account with ``account``) or the caller's account's."""
    _may_manage(who)
    at = now()
    with db.sessions() as s:
        q = select(Token, Account.name).join(Account, Account.id == Token.account_id)
        if account is not None:
            acct = account_by_name(s, account)
            if not who.is_admin and acct.id != who.account_id:
                raise Forbidden("only an admin may list another account's tokens")
            q = q.where(Token.account_id == acct.id)
        elif not who.is_admin:
            q = q.where(Token.account_id == who.account_id)
        rows = s.execute(q.order_by(Token.created_at, Token.id)).all()
        return [_view(t, name, at) for t, name in rows]


def _live_admins(s: Session, at: datetime) -> int:
    return sum(
        1
        for t in s.scalars(select(Token).where(Token.role == Role.ADMIN.value))
        if token_state(t, at) == "live"
    )


def revoke_token(
    db: Database, auth: Authenticator, who: Principal, token_id: str
) -> dict[str, Any]:
    """Revoke a token: an admin any, an account its own. Holds from the very next request
    (the token is dropped from the authenticator's cache). Revoking twice changes nothing."""
    _may_manage(who)
    at = now()
    with db.transaction() as s:
        row = s.get(Token, token_id)
        if row is None or (not who.is_admin and row.account_id != who.account_id):
            # another account's token answers as if it did not exist
            raise NotFound(f"no token {token_id!r}", field="id")
        if not row.revoked:
            if (
                row.role == Role.ADMIN.value
                and token_state(row, at) == "live"
                and _live_admins(s, at) <= 1
            ):
                raise Conflict(
                    "this is the last live admin token: create another admin token first",
                    field="id",
                )
            row.revoked, row.revoked_at = True, at
        acct = s.get(Account, row.account_id)
        out = _view(row, acct.name if acct else "", at)
        token_hash = row.token_hash
    auth.forget(token_hash)
    return out
