"""The balancer's choice on hand-built replica sets."""

from __future__ import annotations

import hashlib
from collections import Counter

from gpunet.core.serving.balance import AffinityRule, Replica, choose, preferred


def R(id: str, n: int = 0, ready: bool = True, draining: bool = False) -> Replica:
    return Replica(id, n, ready, draining)


def test_least_outstanding_among_ready_replicas() -> None:
    c = choose([R("a", 3), R("b", 1), R("c", 2)])
    assert c is not None and c.replica == "b"
    assert c.reason == "least outstanding: b (1)"
    # not ready and draining replicas are never chosen, however idle
    c = choose([R("a", 0, ready=False), R("b", 0, draining=True), R("c", 5)])
    assert c is not None and c.replica == "c"
    assert choose([R("a", ready=False), R("b", draining=True)]) is None
    assert choose([]) is None


def test_ties_are_broken_by_the_seed() -> None:
    rs = [R("a"), R("b"), R("c")]
    picks = [choose(rs, seed=s) for s in range(300)]
    counts = Counter(c.replica for c in picks if c)
    assert set(counts) == {"a", "b", "c"}
    assert all(60 <= n <= 140 for n in counts.values()), counts
    # the same seed always gives the same answer, whatever the list's order
    assert all(choose(rs[::-1], seed=s) == picks[s] for s in range(300))


def test_affinity_prefers_the_rendezvous_winner() -> None:
    rs = [R("a"), R("b"), R("c"), R("d")]

    def score(key: str, rid: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\0{rid}".encode(), digest_size=8).digest())

    for key in ("session-1", "session-2", "The quick brown fox"):
        want = max("abcd", key=lambda r: score(key, r))
        c = choose(rs, key=key)
        assert c is not None and (c.replica, c.affinity) == (want, True)
        assert c.reason == f"affinity: preferred {want} (0)"


def test_affinity_is_capped_by_load() -> None:
    key = "s"
    top = preferred([R(x) for x in "abcd"], key).id
    others = [x for x in "abcd" if x != top]

    def rs(load: int) -> list[Replica]:
        return [R(top, load), R(others[0], 1), R(others[1], 1), R(others[2], 0)]

    # load 3: mean (3 + 1 + 1 + 0) / 4 = 1.25, 3 <= 1.25 + 2: kept
    c = choose(rs(3), key=key)
    assert c is not None and (c.replica, c.affinity) == (top, True)
    # load 4: mean 1.5, 4 > 3.5: least outstanding instead
    c = choose(rs(4), key=key)
    assert c is not None and (c.replica, c.affinity) == (others[2], False)
    assert c.reason == (
        f"affinity: preferred {top} is loaded (4 > mean 1.5 + 2); least outstanding {others[2]} (0)"
    )
    # a larger cap keeps it
    c = choose(rs(4), key=key, cap=3)
    assert c is not None and c.replica == top


def test_retries_skip_the_replicas_tried() -> None:
    rs = [R("a", 0), R("b", 1), R("c", 2), R("d", 0, ready=False)]
    tried: list[str] = []
    while (c := choose(rs, exclude=tried)) is not None:
        tried.append(c.replica)
    assert tried == ["a", "b", "c"]
    # with a key, the retry goes to the key's next rendezvous choice
    first = choose(rs[:3], key="k")
    assert first is not None
    second = choose(rs[:3], key="k", exclude=[first.replica])
    assert second is not None
    rest = [r for r in rs[:3] if r.id != first.replica]
    assert second.replica == preferred(rest, "k").id != first.replica


def test_affinity_key_from_a_header() -> None:
    session = AffinityRule("X-Session-Id")
    assert session.key_of({"x-session-id": "abc"}) == "abc"
    assert session.key_of({"X-SESSION-ID": "abc"}) == "abc"
    assert session.key_of({"other": "abc"}) is None
    assert session.key_of({"x-session-id": ""}) is None
    prefix = AffinityRule("X-Prompt", prefix_chars=4)
    assert prefix.key_of({"X-Prompt": "You are a helpful assistant"}) == "You "
