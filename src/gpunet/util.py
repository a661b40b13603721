"""Small helpers shared by the shell (ids, time)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def now() -> datetime:
    return datetime.now(UTC)


def utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    d = utc(dt)
    return d.isoformat() if d else None


def zulu(dt: datetime | None) -> str:
    """A UTC time to the second, as people read it in messages: 2026-05-01T12:00:00Z."""
    d = utc(dt)
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if d else "-"
