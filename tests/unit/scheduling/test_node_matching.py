"""The default policy's type matching across job sizes, and the re-placement pass that must
not drop a job the first pass chose (both found on the multi-GPU Gavel streams)."""

from __future__ import annotations

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan

CC = {"V100": (7, 0), "K80": (3, 7)}
# each job runs 4x faster on a V100 than on a K80
TPUTS = {"one": {"V100": 4.0, "K80": 1.0}, "four": {"V100": 4.0, "K80": 1.0}}


def fleet(*nodes: tuple[str, str, int], keep_running: bool = False) -> Snapshot:
    """Nodes as (id, model, GPUs); GPU i of node n is "n/i"."""
    nv = tuple(NodeView(n) for n, _m, _c in nodes)
    gv = tuple(
        GpuView(f"{n}/{i}", n, m, 16000, CC[m]) for n, m, count in nodes for i in range(count)
    )
    return Snapshot(nv, gv, throughputs=TPUTS, now=1000.0, keep_running=keep_running)


def gpus(node: str, *idx: int) -> tuple[str, ...]:
    return tuple(f"{node}/{i}" for i in idx)


# a 4-GPU job running on the V100 node, and four new one-GPU jobs
BIG = JobRequest("big", "a", gpu_count=4, job_class="four", running_on=gpus("v", 0, 1, 2, 3))
SMALL = [JobRequest(f"s{i}", "a", job_class="one", submitted_at=10.0) for i in range(4)]


def test_a_node_of_one_gpu_jobs_trades_places_with_a_four_gpu_job() -> None:
    """A 4-GPU job runs on the V100 node; four new one-GPU jobs fit only on the K80 node.
    Equal-size type matching cannot swap them; node matching moves the four to the V100s
    (each gains 3/4 of its best speed) and the one to the K80s (it loses as much, once)."""
    snap = fleet(("v", "V100", 4), ("k", "K80", 4))
    big, small = BIG, SMALL
    p = plan(snap, [big, *small], "default")
    where = {pl.job_id: pl.node_id for pl in p.placements}
    assert where == {"big": "k", "s0": "v", "s1": "v", "s2": "v", "s3": "v"}
    assert p.preemptions == ["big"]  # moved: a restart on the K80 node
    assert "type matching swapped it from V100" in p.explanations["big"].note
    # `las` keeps equal-size matching only: the 4-GPU job keeps the V100s
    las = {pl.job_id: pl.node_id for pl in plan(snap, [big, *small], "las").placements}
    assert las["big"] == "v"


def test_node_matching_leaves_jobs_pinned_where_they_run() -> None:
    """With keep_running a job that holds GPUs stays exactly where it is."""
    snap = fleet(("v", "V100", 4), ("k", "K80", 4), keep_running=True)
    big, small = BIG, SMALL
    p = plan(snap, [big, *small], "default")
    where = {pl.job_id: pl.node_id for pl in p.placements}
    assert where == {"big": "v", "s0": "k", "s1": "k", "s2": "k", "s3": "k"}
    assert p.preemptions == []


def test_the_replacement_pass_never_drops_a_chosen_multi_gpu_job() -> None:
    """Two one-GPU jobs run on different nodes of 2 GPUs; a new 2-GPU job outranks them
    (priority). The first pass places it and moves one of them next to the other; re-placing
    the running jobs first would put each back on its own node and leave the 2-GPU job no
    node (it was dropped, its GPUs left idle). Now every chosen job is placed."""
    snap = fleet(("a", "V100", 2), ("b", "V100", 2))
    r1 = JobRequest("r1", "x", job_class="one", submitted_at=0.0, running_on=gpus("a", 0))
    r2 = JobRequest("r2", "x", job_class="one", submitted_at=0.0, running_on=gpus("b", 0))
    two = JobRequest("two", "x", gpu_count=2, job_class="four", priority=1, submitted_at=5.0)
    p = plan(snap, [r1, r2, two], "default")
    placed = {pl.job_id: set(pl.gpu_ids) for pl in p.placements}
    assert set(placed) == {"r1", "r2", "two"}, placed
    assert placed["two"] in ({"a/0", "a/1"}, {"b/0", "b/1"})
    taken = [g for gs in placed.values() for g in gs]
    assert len(taken) == len(set(taken)) == 4
    assert p.preemptions and set(p.preemptions) <= {"r1", "r2"}  # moved next to the other
