"""Offers: the query language of ``gpunet offers``, matching and sorting. Pure.

A query is whitespace-separated terms ``FIELD OP VALUE`` (no spaces inside a term), all of
which must hold, e.g. ``gpu=A100-80GB memory>=40 price<=1.5 reliability>=0.95 site=eu-west``.
Operators: ``= != >= <= > <``; text and yes/no fields take only ``=`` and ``!=``.
``isolation`` compares by level (``isolation>=sandbox``: sandbox or container); ``runtime=podman``
holds when the node offers that runtime among others.

An offer is a plain dict (one GPU on the market) with the keys of ``OFFER_KEYS``; unpriced
GPUs are free and match prices as 0.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from gpunet.catalog import resolve_model
from gpunet.core.isolation import LEVELS, RUNTIME_NAME, Isolation
from gpunet.errors import ValidationFailed

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(r"^([A-Za-z_]+)(>=|<=|!=|=|>|<)(.*)$")
STATES = ("idle", "busy", "owner_busy", "unhealthy", "drained", "offline")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # the offer's key the field reads
    kind: str  # text | model | number | decimal | fraction | cc | bool | state | level | member
    help: str


FIELDS: dict[str, _Field] = {
    "gpu": _Field("model", "model", "GPU model, e.g. A100-80GB"),
    "memory": _Field("memory_gb", "number", "GPU memory in GB"),
    "price": _Field("price_per_hour", "decimal", "credits per GPU-hour (unpriced: 0)"),
    "reliability": _Field("reliability", "fraction", "the node's reputation, 0..1"),
    "site": _Field("site", "text", "the node's site"),
    "tier": _Field("tier", "text", "duty tier: training | inference | secondary"),
    "state": _Field("state", "state", " | ".join(STATES)),
    "available": _Field("available", "bool", "free to take work now: yes | no"),
    "owner_busy": _Field("owner_busy", "bool", "its owner is using it: yes | no"),
    "node": _Field("node_id", "text", "node id"),
    "cc": _Field("compute_capability", "cc", "compute capability, e.g. 8.0"),
    "simulated": _Field("simulated", "bool", "a simulated GPU: yes | no"),
    "isolation": _Field("isolation", "level", "the node's isolation: none < sandbox < container"),
    "runtime": _Field("runtimes", "member", "a container runtime the node offers, e.g. podman"),
    "owner": _Field("owner", "text", "the account that owns the node"),
}
_EQ_ONLY = {"text", "model", "bool", "state", "member"}


@dataclass(frozen=True, slots=True)
class Term:
    field: str
    op: str
    value: Any
    text: str  # the term as written, for messages

    def holds(self, offer: dict[str, Any]) -> bool:
        got = _offer_value(offer, self.field)
        if FIELDS[self.field].kind == "member":
            has = self.value in (got or ())
            return has if self.op == "=" else not has
        if got is None:
            return self.op == "!="  # a missing site or tier differs from any value, equals none
        return OPS[self.op](got, self.value)


def _bad(term: str, reason: str) -> ValidationFailed:
    return ValidationFailed("query", f"{term!r}: {reason}")


def _parse_value(f: _Field, name: str, raw: str, term: str) -> Any:
    if raw == "":
        raise _bad(term, f"missing value for {name} ({f.help})")
    if f.kind == "text":
        return raw
    if f.kind == "model":
        try:
            return resolve_model(raw, field="query")
        except ValidationFailed as exc:
            raise _bad(term, exc.reason) from None
    if f.kind == "level":
        if raw.lower() not in {lv.value for lv in LEVELS}:
            known = " < ".join(lv.value for lv in LEVELS)
            raise _bad(term, f"bad value {raw!r} for {name}; known: {known}")
        return Isolation(raw.lower())
    if f.kind == "member":
        if not RUNTIME_NAME.match(raw.lower()):
            raise _bad(term, f"bad value {raw!r} for {name}; expected a name like podman")
        return raw.lower()
    if f.kind == "state":
        if raw.lower() not in STATES:
            raise _bad(term, f"bad value {raw!r} for state; known: {', '.join(STATES)}")
        return raw.lower()
    if f.kind == "bool":
        low = raw.lower()
        if low not in _TRUE | _FALSE:
            raise _bad(term, f"bad value {raw!r} for {name}; use yes or no")
        return low in _TRUE
    if f.kind == "cc":
        m = re.fullmatch(r"(\d+)(?:\.(\d+))?", raw)
        if m is None:
            raise _bad(term, f"bad value {raw!r} for cc; use MAJOR.MINOR, e.g. 8.0")
        return (int(m.group(1)), int(m.group(2) or 0))
    if f.kind == "decimal":
        try:
            dec = Decimal(raw)
        except InvalidOperation:
            raise _bad(term, f"bad value {raw!r} for {name}; expected a number") from None
        if not dec.is_finite() or dec < 0:
            raise _bad(term, f"bad value {raw!r} for {name}; expected a number >= 0")
        return dec
    try:
        num = float(raw)
    except ValueError:
        raise _bad(term, f"bad value {raw!r} for {name}; expected a number") from None
    if num != num or num in (float("inf"), float("-inf")) or num < 0:
        raise _bad(term, f"bad value {raw!r} for {name}; expected a number >= 0")
    if f.kind == "fraction" and num > 1:
        raise _bad(term, f"bad value {raw!r} for {name}; expected a number from 0 to 1")
    return num


def parse_query(query: str | None) -> tuple[Term, ...]:
    """The terms of ``query``; raises ValidationFailed("query", ...) naming the bad term."""
    terms: list[Term] = []
    for text in (query or "").split():
        m = _TERM.match(text)
        if m is None:
            if any(c in text for c in "=<>!"):
                raise _bad(text, f"bad operator; use one of {' '.join(OPS)}")
            raise _bad(text, "expected FIELD OP VALUE, e.g. price<=1.5")
        name, op, raw = m.group(1).lower(), m.group(2), m.group(3)
        f = FIELDS.get(name)
        if f is None:
            raise _bad(text, f"unknown field {name!r}; known: {', '.join(FIELDS)}")
        if raw[:1] in ("=", "<", ">", "!"):
            raise _bad(text, f"bad operator {op + raw[0]!r}; use one of {' '.join(OPS)}")
        if f.kind in _EQ_ONLY and op not in ("=", "!="):
            raise _bad(text, f"bad operator {op!r} for {name}; use = or !=")
        terms.append(Term(name, op, _parse_value(f, name, raw, text), text))
    return tuple(terms)


def _offer_value(offer: dict[str, Any], name: str) -> Any:
    f = FIELDS[name]
    v = offer.get(f.key)
    if f.kind == "decimal":
        return Decimal(0) if v is None else Decimal(str(v))
    if f.kind == "level" and isinstance(v, str):
        return Isolation(v)
    if f.kind == "cc" and isinstance(v, str):
        major, _, minor = v.partition(".")
        return (int(major), int(minor or 0))
    return v


def matches(offer: dict[str, Any], terms: Iterable[Term]) -> bool:
    return all(t.holds(offer) for t in terms)


def parse_sort(sort: str | None) -> tuple[str, bool] | None:
    """``FIELD`` or ``-FIELD`` (descending) -> (field, descending); None: the default order."""
    if not sort:
        return None
    desc = sort.startswith("-")
    name = sort.lstrip("-+").lower()
    if name not in FIELDS:
        raise ValidationFailed("sort", f"unknown field {name!r}; known: {', '.join(FIELDS)}")
    return name, desc


def _default_key(offer: dict[str, Any]) -> tuple[Any, ...]:
    rel = offer.get("reliability")
    return (
        _offer_value(offer, "price"),
        -(rel if rel is not None else -1.0),
        str(offer.get("gpu_id", "")),
    )


def sort_offers(offers: Sequence[dict[str, Any]], sort: str | None = None) -> list[dict[str, Any]]:
    """Offers in the default order (price, then reliability high to low, then GPU id), or by
    ``sort``; stable, and offers without the sort field go last either way."""
    out = sorted(offers, key=_default_key)
    key = parse_sort(sort)
    if key is None:
        return out
    name, desc = key
    have = [o for o in out if _offer_value(o, name) is not None]
    lack = [o for o in out if _offer_value(o, name) is None]
    have.sort(key=lambda o: _offer_value(o, name), reverse=desc)
    return have + lack


def select_offers(
    offers: Iterable[dict[str, Any]], query: str | None = None, sort: str | None = None
) -> list[dict[str, Any]]:
    """The offers matching every term of ``query``, sorted."""
    terms = parse_query(query)
    parse_sort(sort)  # a bad sort field fails before any work
    return sort_offers([o for o in offers if matches(o, terms)], sort)
