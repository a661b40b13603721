"""The reliability floor filter and the reliability scorer."""

from __future__ import annotations

from dataclasses import replace

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan
from gpunet.core.scheduling.planner import explain, never_fits


def _fleet(flaky: float | None, good: float | None) -> Snapshot:
    return Snapshot(
        nodes=(NodeView("flaky"), NodeView("good")),
        gpus=(
            GpuView("flaky/0", "flaky", "A100-80GB", 80_000, (8, 0), reliability=flaky),
            GpuView("good/0", "good", "A100-80GB", 80_000, (8, 0), reliability=good),
        ),
    )


def test_a_floor_rejects_nodes_below_it_and_says_so() -> None:
    snap = _fleet(0.6, 0.95)
    job = JobRequest("j", "a", min_reliability=0.9)
    exp = explain(snap, job, "fifo")
    assert exp.rejections == {"below reliability floor": 1}
    assert exp.placed is not None and exp.placed.node_id == "good"
    busy = Snapshot(snap.nodes, (snap.gpus[0], replace(snap.gpus[1], busy=True)))
    exp = explain(busy, job, "fifo")
    assert exp.placed is None
    assert "1 below reliability floor" in exp.summary()


def test_unrated_nodes_pass_a_floor_and_submit_never_rejects_for_it() -> None:
    job = JobRequest("j", "a", min_reliability=0.99)
    assert explain(_fleet(None, None), job, "fifo").placed is not None
    assert never_fits(_fleet(None, None), job) is None


def test_the_scorer_prefers_the_better_node_when_all_else_is_equal() -> None:
    for policy in ("fifo", "priority", "las", "default"):
        p = plan(_fleet(0.7, 0.95), [JobRequest("j", "a")], policy)
        assert p.placements[0].node_id == "good", policy
        p = plan(_fleet(0.95, 0.7), [JobRequest("j", "a")], policy)
        assert p.placements[0].node_id == "flaky", policy
    exp = explain(_fleet(0.7, 0.95), JobRequest("j", "a"), "fifo")
    assert abs(exp.scores["reliability"] - 0.05 * 0.95) < 1e-9


def test_without_reputations_placement_is_unchanged() -> None:
    p = plan(_fleet(None, None), [JobRequest("j", "a")], "fifo")
    assert p.placements[0].node_id == "flaky"  # the first class, as before reputations
