"""The offers query language: parsing (every error names its term), matching and sorting."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from gpunet.core.offers import parse_query, parse_sort, select_offers, sort_offers
from gpunet.errors import ValidationFailed


def _offer(gid: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gpu_id": gid,
        "node_id": "n1",
        "model": "A100-80GB",
        "memory_gb": 80.0,
        "compute_capability": "8.0",
        "price_per_hour": "1.000000",
        "reliability": 0.9,
        "tier": None,
        "site": None,
        "state": "idle",
        "available": True,
        "simulated": True,
    }
    return base | kw


OFFERS = [
    _offer("a", price_per_hour="2.0", reliability=0.99, site="eu-west", tier="training"),
    _offer("b", model="RTX-4090", memory_gb=24.0, compute_capability="8.9", price_per_hour="0.5"),
    _offer("c", price_per_hour=None, reliability=0.5, state="busy", available=False),
    _offer("d", model="T4", memory_gb=16.0, compute_capability="7.5", reliability=0.97),
]


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["gpu_id"] for r in rows]


def test_terms_parse_to_typed_values() -> None:
    terms = parse_query(
        "gpu=a100-80gb memory>=40 price<=1.5 reliability>0.95 cc>=8.0 available=yes"
    )
    got = {t.field: (t.op, t.value) for t in terms}
    assert got == {
        "gpu": ("=", "A100-80GB"),
        "memory": (">=", 40.0),
        "price": ("<=", Decimal("1.5")),
        "reliability": (">", 0.95),
        "cc": (">=", (8, 0)),
        "available": ("=", True),
    }
    assert parse_query("") == () and parse_query(None) == ()


@pytest.mark.parametrize(
    ("query", "term", "says"),
    [
        ("colour=red", "colour=red", "unknown field 'colour'; known: gpu, memory"),
        ("memory>=lots", "memory>=lots", "bad value 'lots' for memory"),
        ("price<=-1", "price<=-1", "expected a number >= 0"),
        ("reliability>=1.5", "reliability>=1.5", "from 0 to 1"),
        ("gpu=Z9000", "gpu=Z9000", "unknown GPU model 'Z9000'"),
        ("gpu>=A100-80GB", "gpu>=A100-80GB", "bad operator '>=' for gpu; use = or !="),
        ("memory=>40", "memory=>40", "bad operator '=>'"),
        ("memory==40", "memory==40", "bad operator '=='"),
        ("memory~40", "memory~40", "expected FIELD OP VALUE"),
        ("memory!40", "memory!40", "bad operator"),
        ("site=", "site=", "missing value for site"),
        ("state=sleepy", "state=sleepy", "known: idle, busy"),
        ("available=maybe", "available=maybe", "use yes or no"),
        ("cc>=eight", "cc>=eight", "MAJOR.MINOR"),
        ("price<=1.5 tier=training memory>x", "memory>x", "bad value 'x'"),
    ],
)
def test_every_error_names_the_term(query: str, term: str, says: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_query(query)
    assert err.value.field == "query"
    assert repr(term) in err.value.message
    assert says in err.value.message


def test_matching_filters_on_every_kind_of_field() -> None:
    assert _ids(select_offers(OFFERS, "gpu=A100-80GB")) == ["c", "a"]
    assert _ids(select_offers(OFFERS, "memory>=40 price<=1.5")) == ["c"]  # unpriced is free
    assert _ids(select_offers(OFFERS, "price>0.5 price<=2")) == ["d", "a"]
    assert _ids(select_offers(OFFERS, "reliability>=0.95")) == ["d", "a"]
    assert _ids(select_offers(OFFERS, "site=eu-west tier=training")) == ["a"]
    assert _ids(select_offers(OFFERS, "site!=eu-west")) == ["c", "b", "d"]  # no site differs
    assert _ids(select_offers(OFFERS, "state=busy")) == ["c"]
    assert _ids(select_offers(OFFERS, "available=no")) == ["c"]
    assert _ids(select_offers(OFFERS, "cc>8.0")) == ["b"]
    assert _ids(select_offers(OFFERS, "cc<8")) == ["d"]
    assert _ids(select_offers(OFFERS, "node=n2")) == []
    assert _ids(select_offers(OFFERS, "simulated=true gpu!=T4")) == ["c", "b", "a"]


def test_default_order_is_price_then_reliability_high_to_low() -> None:
    same_price = [_offer("x", reliability=0.5), _offer("y", reliability=0.9), _offer("z")]
    assert _ids(sort_offers(same_price)) == ["y", "z", "x"]  # y and z tie: by id
    assert _ids(sort_offers(OFFERS)) == ["c", "b", "d", "a"]


def test_sort_by_a_field_either_way_with_missing_values_last() -> None:
    assert _ids(sort_offers(OFFERS, "memory")) == ["d", "b", "c", "a"]
    assert _ids(sort_offers(OFFERS, "-reliability")) == ["a", "d", "b", "c"]
    assert _ids(sort_offers(OFFERS, "site")) == ["a", "c", "b", "d"]
    assert _ids(sort_offers(OFFERS, "-site")) == ["a", "c", "b", "d"]
    assert parse_sort("-price") == ("price", True)
    with pytest.raises(ValidationFailed, match="sort: unknown field 'colour'"):
        select_offers(OFFERS, "", "colour")
