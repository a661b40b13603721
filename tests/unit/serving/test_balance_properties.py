"""Properties of the balancer's choice over random replica sets."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.serving.balance import Replica, choose, eligible, preferred

replicas = st.lists(
    st.builds(
        Replica,
        id=st.text("abcdefgh", min_size=1, max_size=3),
        outstanding=st.integers(0, 20),
        ready=st.booleans(),
        draining=st.booleans(),
    ),
    max_size=10,
    unique_by=lambda r: r.id,
)
keys = st.one_of(st.none(), st.text(min_size=1, max_size=12))


@settings(max_examples=300, deadline=None)
@given(replicas, keys, st.lists(st.text("abcdefgh", min_size=1, max_size=3)), st.integers())
def test_only_eligible_replicas_and_the_right_one(
    rs: list[Replica], key: str | None, tried: list[str], seed: int
) -> None:
    c = choose(rs, key=key, exclude=tried, seed=seed)
    pool = [r for r in rs if r.ready and not r.draining and r.id not in tried]
    if not pool:
        assert c is None
        return
    assert c is not None
    picked = next(r for r in pool if r.id == c.replica)  # never a non-eligible one
    fewest = min(r.outstanding for r in pool)
    if key is None or not c.affinity:
        assert picked.outstanding == fewest
    else:
        mean = sum(r.outstanding for r in pool) / len(pool)
        assert picked.outstanding <= mean + 2
        assert picked == preferred(pool, key)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text("abcdefghij", min_size=1, max_size=4), min_size=1, max_size=8, unique=True),
    st.text(min_size=1, max_size=20),
    st.integers(),
    st.randoms(),
)
def test_affinity_is_stable_while_the_set_is_unchanged(
    ids: list[str], key: str, seed: int, rnd: random.Random
) -> None:
    rs = [Replica(i) for i in ids]
    shuffled = rs[:]
    rnd.shuffle(shuffled)
    a = choose(rs, key=key)
    b = choose(shuffled, key=key, seed=seed)
    assert a is not None and b is not None
    assert (a.replica, a.affinity) == (b.replica, True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text("abcdefghij", min_size=1, max_size=4), min_size=1, max_size=8, unique=True),
    st.text("klmnop", min_size=1, max_size=4),
    st.lists(st.text(min_size=1), min_size=1, max_size=30),
)
def test_a_new_replica_only_takes_keys(ids: list[str], new: str, ks: list[str]) -> None:
    """Adding a replica moves a key only to the new replica, never between old ones."""
    before = [Replica(i) for i in ids]
    after = [*before, Replica(new)]
    for k in ks:
        old, now = preferred(before, k).id, preferred(after, k).id
        assert now in (old, new)


def test_a_new_replica_takes_about_one_key_in_n() -> None:
    keys = [f"session-{i}" for i in range(5000)]
    for n in (2, 4, 8):
        before = [Replica(f"r{i}") for i in range(n)]
        after = [*before, Replica(f"r{n}")]
        moved = sum(preferred(before, k).id != preferred(after, k).id for k in keys)
        share = moved / len(keys)
        assert abs(share - 1 / (n + 1)) < 0.03, (n, share)


@settings(max_examples=100, deadline=None)
@given(replicas, keys)
def test_retries_visit_each_eligible_replica_once(rs: list[Replica], key: str | None) -> None:
    tried: list[str] = []
    while (c := choose(rs, key=key, exclude=tried)) is not None:
        assert c.replica not in tried
        tried.append(c.replica)
    assert sorted(tried) == sorted(r.id for r in eligible(rs))
