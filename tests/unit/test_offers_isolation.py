"""Offers by isolation (ordered none < sandbox < container), runtime and owner."""

from __future__ import annotations

from typing import Any

import pytest

from gpunet.core.offers import parse_query, select_offers
from gpunet.errors import ValidationFailed


def _offer(gid: str, isolation: str, runtimes: list[str], owner: str | None) -> dict[str, Any]:
    return {
        "gpu_id": gid,
        "node_id": f"n-{gid}",
        "model": "A100-80GB",
        "memory_gb": 80.0,
        "compute_capability": "8.0",
        "price_per_hour": None,
        "reliability": None,
        "state": "idle",
        "available": True,
        "simulated": True,
        "isolation": isolation,
        "runtimes": runtimes,
        "owner": owner,
    }


OFFERS = [
    _offer("g-none", "none", [], "alice"),
    _offer("g-sand", "sandbox", [], "bob"),
    _offer("g-box", "container", ["podman"], "alice"),
    _offer("g-both", "container", ["docker", "podman"], None),
]


def _ids(query: str) -> set[str]:
    return {o["gpu_id"] for o in select_offers(OFFERS, query)}


def test_isolation_compares_by_level_not_by_text() -> None:
    assert _ids("isolation>=sandbox") == {"g-box", "g-both", "g-sand"}
    assert _ids("isolation>sandbox") == {"g-box", "g-both"}
    assert _ids("isolation<container") == {"g-none", "g-sand"}
    assert _ids("isolation=none") == {"g-none"}
    assert _ids("isolation!=container") == {"g-none", "g-sand"}
    assert _ids("isolation>=NONE") == _ids("")
    ordered = [o["isolation"] for o in select_offers(OFFERS, sort="-isolation")]
    assert ordered == ["container", "container", "sandbox", "none"]


def test_runtime_matches_one_of_the_nodes_runtimes() -> None:
    assert _ids("runtime=podman") == {"g-box", "g-both"}
    assert _ids("runtime=docker") == {"g-both"}
    assert _ids("runtime!=docker") == {"g-none", "g-sand", "g-box"}


def test_owner_is_a_text_field() -> None:
    assert _ids("owner=alice") == {"g-none", "g-box"}
    assert _ids("owner!=alice") == {"g-sand", "g-both"}
    assert _ids("owner=alice isolation>=container runtime=podman") == {"g-box"}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("isolation>=vm", "bad value 'vm' for isolation; known: none < sandbox < container"),
        ("runtime>=podman", "bad operator '>=' for runtime; use = or !="),
        ("runtime=Pod/man", "bad value 'Pod/man' for runtime"),
        ("owner<alice", "bad operator '<' for owner"),
    ],
)
def test_bad_terms_are_named(query: str, reason: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_query(query)
    assert err.value.field == "query"
    assert f"{query!r}: {reason}" in err.value.message
