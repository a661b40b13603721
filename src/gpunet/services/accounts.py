"""Accounts: who tokens act for, who pays and who earns. An account may exist before any
token does (``gpunet accounts create NAME``), so credits and quotas can be set up first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from gpunet.errors import Conflict, NotFound, ValidationFailed
from gpunet.services.auth import Principal, Role
from gpunet.store.db import Database
from gpunet.store.tables import Account, Node, Token
from gpunet.util import iso, new_id, now


def account_by_name(s: Session, name: str, field: str = "account") -> Account:
    """The account called ``name``; a 404 naming ``field`` and how to create it otherwise."""
    acct = s.scalar(select(Account).where(Account.name == name))
    if acct is None:
        raise NotFound(
            f"{field}: no account {name!r}; create it with `gpunet accounts create {name}` "
            f"or `gpunet tokens create --role consumer --account {name}`",
            field=field,
        )
    return acct


def account_names(db: Database, ids: set[str] | None = None) -> dict[str, str]:
    """Account names by id (of ``ids`` only, when given): one query for a whole listing."""
    q = select(Account.id, Account.name)
    if ids is not None:
        if not ids:
            return {}
        q = q.where(Account.id.in_(ids))
    with db.sessions() as s:
        return {aid: name for aid, name in s.execute(q)}


def create_account(db: Database, who: Principal, name: str) -> dict[str, Any]:
    who.require(Role.ADMIN)
    name = name.strip()
    if not name:
        raise ValidationFailed("name", "must not be empty")
    if len(name) > 200:
        raise ValidationFailed("name", "must be at most 200 characters")
    with db.transaction() as s:
        if s.scalar(select(Account.id).where(Account.name == name)):
            raise Conflict(f"account {name!r} already exists", field="name")
        acct = Account(id=new_id("acct"), name=name, created_at=now())
        s.add(acct)
        s.flush()
        return _view(acct, [], 0)


def _view(acct: Account, roles: list[str], nodes: int) -> dict[str, Any]:
    return {
        "id": acct.id,
        "name": acct.name,
        "roles": sorted(set(roles)),
        "tokens": len(roles),
        "nodes": nodes,
        "created_at": iso(acct.created_at),
    }


def list_accounts(db: Database, who: Principal) -> list[dict[str, Any]]:
    """Every account (an admin) or the caller's own, with the roles of its live tokens
    (neither revoked nor expired) and how many nodes it owns."""
    who.require(Role.CONSUMER, Role.PROVIDER)
    with db.sessions() as s:
        q = select(Account).order_by(Account.created_at, Account.name)
        if not who.is_admin:
            q = q.where(Account.id == who.account_id)
        accounts = list(s.scalars(q))
        live = s.execute(
            select(Token.account_id, Token.role).where(
                Token.revoked.is_(False),
                or_(Token.expires_at.is_(None), Token.expires_at > now()),
            )
        ).all()
        nodes = dict(
            s.execute(select(Node.account_id, func.count()).group_by(Node.account_id)).all()
        )
    roles: dict[str, list[str]] = {}
    for account_id, role in live:
        roles.setdefault(account_id, []).append(role)
    return [_view(a, roles.get(a.id, []), int(nodes.get(a.id, 0))) for a in accounts]
