"""The default policy's speed-aware order: a job of several GPUs goes in the order of its
index times the normalised throughput of the GPUs it would get (found on the multi-GPU
Gavel streams, where 4- and 8-GPU jobs took slow nodes ahead of jobs that ran well there)."""

from __future__ import annotations

from dataclasses import replace

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan
from gpunet.core.scheduling.policies import default_indexes, order_default

CC = {"V100": (7, 0), "K80": (3, 7)}
# on a K80 "slow" runs at 0.25 of its V100 speed, "mid" at 0.4
TPUTS = {"slow": {"V100": 4.0, "K80": 1.0}, "mid": {"V100": 5.0, "K80": 2.0}}


def fleet() -> Snapshot:
    """A V100 node whose four GPUs are busy (held by work outside the plan) and a free K80
    node: a 4-GPU job can only get the K80s."""
    nv = (NodeView("v"), NodeView("k"))
    gv = tuple(GpuView(f"v/{i}", "v", "V100", 16000, CC["V100"], busy=True) for i in range(4))
    gv += tuple(GpuView(f"k/{i}", "k", "K80", 16000, CC["K80"]) for i in range(4))
    return Snapshot(nv, gv, throughputs=TPUTS, now=1000.0)


A = JobRequest("a", "x", gpu_count=4, job_class="slow", submitted_at=0.0)
B = JobRequest("b", "x", gpu_count=4, job_class="mid", submitted_at=10.0)


def test_a_multi_gpu_job_whose_room_is_slow_lets_one_that_runs_well_there_go_first() -> None:
    """Both jobs are new: A's index is B's (times A's slightly longer wait), so the plain order
    puts A first and A took the K80 node at 1/4 of its best speed (B, at 0.4 there, is too
    slow to take it by slow-slot yielding, which needs 0.5). Speed-aware: A's turn comes at
    index x 0.25, B's at index x 0.4, so B runs there and A waits."""
    snap = fleet()
    ix = default_indexes([A, B], snap)
    assert ix["a"] >= ix["b"]  # the plain order: A first
    assert [j.id for j in order_default([A, B], snap, 0)] == ["a", "b"]
    assert ix["a"] * 0.25 < ix["b"] * 0.4  # hand-computed: B goes first
    p = plan(snap, [A, B], "default")
    assert [(pl.job_id, pl.node_id) for pl in p.placements] == [("b", "k")]
    assert p.explanations["a"].placed is None
    # `las` has no index: arrival order among equal work, A takes the K80s
    assert [pl.job_id for pl in plan(snap, [A, B], "las").placements] == ["a"]


def test_a_multi_gpu_job_keeps_its_turn_when_its_index_outweighs_the_slowdown() -> None:
    """B has done 100 h of work, so its Gittins index is far below A's: A x 0.25 still beats
    B x 0.4 and A takes the K80 node as in the plain order."""
    snap = fleet()
    b = replace(B, attained_work_s=100 * 3600.0, attained_service_s=400 * 3600.0)
    ix = default_indexes([A, b], snap)
    assert ix["a"] * 0.25 > ix["b"] * 0.4
    p = plan(snap, [A, b], "default")
    assert [(pl.job_id, pl.node_id) for pl in p.placements] == [("a", "k")]


def test_one_gpu_jobs_keep_the_policy_order() -> None:
    """A one-GPU job's speed counts as 1: with only one-GPU jobs the order is the plain one.
    The one free K80 GPU goes to A (first in index order, 0.25 there), not to B (0.4 there,
    which would go first by index x speed; too slow to take A's slot by slow-slot yielding,
    which needs 0.5)."""
    nv = (NodeView("v"), NodeView("k"))
    gv = (
        GpuView("v/0", "v", "V100", 16000, CC["V100"], busy=True),
        GpuView("k/0", "k", "K80", 16000, CC["K80"]),
    )
    snap = Snapshot(nv, gv, throughputs=TPUTS, now=1000.0)
    a = JobRequest("a", "x", job_class="slow", submitted_at=0.0)
    b = JobRequest("b", "x", job_class="mid", submitted_at=10.0)
    assert [pl.job_id for pl in plan(snap, [a, b], "default").placements] == ["a"]
