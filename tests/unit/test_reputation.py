"""Node reputation: bounded, monotone in every bad signal, and every component explained."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.reputation import PRIOR, BenchStats, NodeHistory, bench_stats, reputation

benches = st.lists(
    st.builds(
        BenchStats,
        runs=st.integers(0, 50),
        mean=st.floats(0, 200, allow_nan=False),
        stdev=st.floats(0, 100, allow_nan=False),
    ),
    max_size=8,
).map(tuple)

histories = st.builds(
    NodeHistory,
    observed_s=st.floats(0, 1e7, allow_nan=False),
    downtime_s=st.floats(0, 1e7, allow_nan=False),
    attempts=st.integers(0, 1000),
    lost=st.integers(0, 1000),
    gpus=st.integers(0, 16),
    incidents=st.integers(0, 100),
    reclaimed=st.integers(0, 1000),
    benchmarks=benches,
)


@given(histories)
def test_score_is_bounded_and_every_component_is_explained(h: NodeHistory) -> None:
    rep = reputation(h)
    assert 0.0 <= rep.score <= 1.0
    assert [c.name for c in rep.components] == [
        "uptime",
        "host_faults",
        "benchmark",
        "incidents",
        "availability",
    ]
    for c in rep.components:
        assert 0.0 <= c.value <= 1.0 and c.weight > 0 and c.explanation
        assert c.name in rep.explanation()


@given(histories, st.floats(1, 1e6, allow_nan=False))
def test_more_downtime_never_raises_the_score(h: NodeHistory, more: float) -> None:
    worse = replace(h, downtime_s=h.downtime_s + more)
    assert reputation(worse).score <= reputation(h).score + 1e-12


@given(histories, st.integers(1, 100))
def test_more_lost_attempts_never_raise_the_score(h: NodeHistory, more: int) -> None:
    # the same attempts, more of them lost
    n = max(h.attempts, h.lost + more)
    base = replace(h, attempts=n, lost=min(h.lost, n))
    worse = replace(h, attempts=n, lost=min(h.lost + more, n))
    assert reputation(worse).score <= reputation(base).score + 1e-12


@given(histories, st.integers(1, 50))
def test_more_incidents_never_raise_the_score(h: NodeHistory, more: int) -> None:
    worse = replace(h, incidents=h.incidents + more)
    assert reputation(worse).score <= reputation(h).score + 1e-12


@given(histories, st.floats(0, 50, allow_nan=False))
def test_wider_benchmark_spread_never_raises_the_score(h: NodeHistory, more: float) -> None:
    wider = tuple(BenchStats(b.runs, b.mean, b.stdev + more) for b in h.benchmarks)
    worse = replace(h, benchmarks=wider)
    assert reputation(worse).score <= reputation(h).score + 1e-12


def test_a_new_node_gets_the_neutral_prior_and_says_so() -> None:
    rep = reputation(NodeHistory(observed_s=5.0, gpus=2))
    why = {c.name: c.explanation for c in rep.components}
    assert "new node: neutral prior" in why["uptime"]
    assert "no attempts yet: neutral prior" in why["host_faults"]
    assert "neutral prior" in why["benchmark"]
    # 5s online barely moves it; incidents and availability start full
    assert abs(rep.score - (0.8 * PRIOR + 0.3 * 1.0) / 1.1) < 1e-3


def test_a_lost_attempt_lowers_the_score_and_is_named() -> None:
    fresh = reputation(NodeHistory(observed_s=5.0, gpus=1))
    hit = reputation(NodeHistory(observed_s=5.0, gpus=1, attempts=1, lost=1))
    assert hit.score < fresh.score
    assert "1 of 1 attempts lost to host faults" in hit.explanation()


def test_bench_stats_from_sums() -> None:
    b = bench_stats(2, 180.0, 90.0**2 + 90.0**2)
    assert (b.runs, b.mean, b.stdev, b.cv) == (2, 90.0, 0.0, 0.0)
    b = bench_stats(2, 200.0, 90.0**2 + 110.0**2)
    assert abs(b.stdev - 10.0) < 1e-9 and abs(b.cv - 0.1) < 1e-9
    assert bench_stats(0, 0.0, 0.0).runs == 0


def test_a_reclaim_is_not_a_host_fault_and_costs_less_than_a_lost_attempt() -> None:
    base = NodeHistory(observed_s=3600.0, gpus=1, attempts=4)
    reclaimed = reputation(NodeHistory(observed_s=3600.0, gpus=1, attempts=4, reclaimed=1))
    lost = reputation(NodeHistory(observed_s=3600.0, gpus=1, attempts=4, lost=1))
    parts = {c.name: c for c in reclaimed.components}
    assert (
        parts["host_faults"].value
        == {c.name: c for c in reputation(base).components}["host_faults"].value
    )
    assert "1 of 4 attempts reclaimed by the GPU's owner" in reclaimed.explanation()
    assert lost.score < reclaimed.score < reputation(base).score
    assert parts["availability"].weight < parts["host_faults"].weight


@given(histories, st.integers(1, 20))
def test_more_reclaims_never_raise_the_score(h: NodeHistory, more: int) -> None:
    base = replace(h, attempts=h.attempts + more)
    worse = replace(base, reclaimed=min(base.reclaimed + more, base.attempts))
    assert reputation(worse).score <= reputation(base).score + 1e-12
