"""Gang placement: choices, explanations and the never-fits check, on small fleets."""

from __future__ import annotations

from decimal import Decimal

from gpunet.core.scheduling import (
    GpuView,
    JobRequest,
    NodeView,
    Snapshot,
    explain,
    never_fits,
    plan,
)
from gpunet.core.scheduling.gittins import gittins_table
from gpunet.core.scheduling.model import AccountView
from gpunet.core.scheduling.policies import (
    AGING_EXPONENT,
    AGING_S,
    MULTI_GPU_STICKY,
    order_default,
)

CC = {"A100-80GB": (8, 0), "V100": (7, 0), "K80": (3, 7)}


def fleet(*nodes: tuple[str, str | None, str, int, int], **kw: object) -> Snapshot:
    """Nodes as (id, site, model, GPUs, busy GPUs)."""
    nv, gv = [], []
    for node, site, model, count, busy in nodes:
        nv.append(NodeView(node, site=site))
        for i in range(count):
            gv.append(GpuView(f"{node}/{i}", node, model, 80000, CC[model], busy=i < busy))
    return Snapshot(tuple(nv), tuple(gv), **kw)  # type: ignore[arg-type]


def gang(job_id: str = "g", nodes: int = 2, gpus: int = 4, **kw: object) -> JobRequest:
    return JobRequest(job_id, "a", gpu_count=gpus, node_count=nodes, **kw)  # type: ignore[arg-type]


EU_US = fleet(
    ("e1", "eu-west", "A100-80GB", 4, 0),
    ("e2", "eu-west", "A100-80GB", 4, 1),
    ("u1", "us-east", "A100-80GB", 4, 4),
    ("u2", "us-east", "A100-80GB", 4, 0),
    ("u3", "us-east", "A100-80GB", 4, 0),
)


def test_a_gang_takes_whole_nodes_of_the_site_that_fits() -> None:
    p = plan(EU_US, [gang(gpu_models=("A100-80GB",))], "default")
    (pl,) = p.placements
    assert pl.members == (("u2", tuple(f"u2/{i}" for i in range(4))), ("u3", pl.members[1][1]))
    assert pl.node_id == "u2" and pl.gpu_ids == pl.members[0][1]
    assert len(pl.all_gpu_ids) == 8
    exp = p.explanations["g"]
    assert exp.gang == (
        "needs 2 nodes × 4 A100-80GB in one site: "
        "site us-east has 2 such nodes free, site eu-west has 1"
    )
    assert exp.summary().endswith("; " + exp.gang)
    assert exp.note == "2 nodes × 4xA100-80GB in site us-east (u2, u3): " + (
        "the best-scoring site and model with room"
    )


def test_explain_says_which_site_lacks_nodes() -> None:
    exp = explain(EU_US, gang(nodes=3, gpu_models=("A100-80GB",)))
    assert exp.placed is None
    assert exp.summary() == (
        "15/20 GPUs fit: 5 busy; needs 3 nodes × 4 A100-80GB in one site: "
        "site us-east has 2 such nodes free, site eu-west has 1"
    )


def test_a_job_that_names_a_site_counts_the_others_as_elsewhere() -> None:
    exp = explain(EU_US, gang(site="eu-west"))
    assert exp.placed is None
    assert exp.rejections == {"not in site eu-west": 12, "busy": 1}
    assert exp.gang == "needs 2 nodes × 4 GPUs in site eu-west: it has 1 such node free"
    # a one-node job that names a site stays there too
    one = plan(EU_US, [gang(nodes=1, gpus=3, site="eu-west")], "default").placements
    assert [p.node_id for p in one] == ["e2"]  # best fit: uses the 3 GPUs e2 has free
    assert one[0].members == ()


def test_nodes_without_a_site_form_one_group() -> None:
    snap = fleet(("a", None, "V100", 2, 0), ("b", None, "V100", 2, 0), ("c", "x", "V100", 2, 0))
    (pl,) = plan(snap, [gang(gpus=2)], "fifo").placements
    assert {n for n, _ in pl.ranks()} == {"a", "b"}
    exp = explain(snap, gang(nodes=3, gpus=2))
    assert exp.gang == (
        "needs 3 nodes × 2 GPUs in one site: nodes without a site have 2 such nodes free, "
        "site x has 1"
    )


def test_prefers_one_model_and_nodes_it_uses_up() -> None:
    snap = fleet(
        ("a", "s", "V100", 8, 4),  # 4 free of 8: strands none either way, same model
        ("b", "s", "V100", 4, 0),  # exactly 4 free
        ("c", "s", "V100", 8, 0),  # 8 free: would strand 4
        ("d", "s", "A100-80GB", 4, 0),  # faster, but alone: a mixed gang runs at V100 pace
    )
    (pl,) = plan(snap, [gang()], "fifo").placements
    assert sorted(n for n, _ in pl.ranks()) == ["a", "b"]


def test_all_or_nothing_and_never_a_gpu_twice() -> None:
    snap = fleet(("a", "s", "V100", 4, 0), ("b", "s", "V100", 4, 0), ("c", "s", "V100", 4, 0))
    p = plan(snap, [gang("g1"), gang("g2"), JobRequest("one", "a", gpu_count=4)], "fifo")
    placed = {pl.job_id: pl for pl in p.placements}
    assert set(placed) == {"g1", "one"}  # g2 would need two of the three nodes
    used = [g for pl in p.placements for g in pl.all_gpu_ids]
    assert len(used) == len(set(used)) == 12
    assert p.explanations["g2"].gang.startswith("needs 2 nodes × 4 GPUs in one site: site s ")


def test_admission_counts_every_member() -> None:
    acct = AccountView("a", max_gpus=6)
    snap = fleet(("a", "s", "V100", 4, 0), ("b", "s", "V100", 4, 0), accounts={"a": acct})
    p = plan(snap, [gang()], "fifo")
    assert p.placements == []
    exp = p.explanations["g"]
    assert "quota" in exp.note or "GPU" in exp.note
    assert exp.fitting_gpus == 0 and sum(exp.rejections.values()) == 8
    ok = Snapshot(snap.nodes, snap.gpus, accounts={"a": AccountView("a", max_gpus=8)})
    assert len(plan(ok, [gang()], "fifo").placements) == 1


def test_admission_holds_the_sum_of_member_prices() -> None:
    nodes = (NodeView("a", site="s"), NodeView("b", site="s"))
    gpus = tuple(
        GpuView(f"{n}/{i}", n, "V100", 16000, (7, 0), price_per_hour=Decimal(price))
        for n, price in (("a", "1"), ("b", "3"))
        for i in range(2)
    )
    # 2 GPUs at 1 + 2 at 3 = 8 an hour; a balance of 7 cannot hold one hour
    poor = Snapshot(nodes, gpus, accounts={"a": AccountView("a", balance=Decimal(7))})
    assert plan(poor, [gang(gpus=2)], "fifo").placements == []
    rich = Snapshot(nodes, gpus, accounts={"a": AccountView("a", balance=Decimal(8))})
    assert len(plan(rich, [gang(gpus=2)], "fifo").placements) == 1


def test_a_running_gang_stays_and_loses_all_members_when_preempted() -> None:
    snap = fleet(
        ("a", "s", "V100", 2, 2),
        ("b", "s", "V100", 2, 2),
        ("c", "s", "V100", 2, 0),
        keep_running=True,
    )
    running = gang("g", gpus=2, interruptible=True, running_on=("a/0", "a/1", "b/0", "b/1"))
    p = plan(snap, [running], "default")
    assert [pl.all_gpu_ids for pl in p.placements] == [running.running_on]
    assert p.preemptions == []
    # a job of a higher priority that needs 4 GPUs on one... of two nodes takes the gang's
    urgent = gang("u", gpus=2, nodes=2, priority=5)
    blocker = JobRequest("c-user", "b", gpu_count=2, submitted_at=-1)
    p = plan(snap, [running, urgent, blocker], "default")
    placed = {pl.job_id: pl for pl in p.placements}
    assert "g" not in placed and "g" in p.preemptions
    assert set(placed) == {"u", "c-user"}
    assert p.preempted_for["g"] == "u"


def test_never_fits_wording() -> None:
    assert never_fits(EU_US, gang(nodes=3)) is None  # us-east has 3 nodes of 4
    assert never_fits(EU_US, gang(nodes=4)) == (
        "no site has 4 nodes with 4 GPU(s) each of one model that fit this job; the best site has 3"
    )
    assert never_fits(EU_US, gang(nodes=3, site="eu-west")) == (
        "site eu-west does not have 3 nodes with 4 GPU(s) each of one model that fit this "
        "job; it has 2"
    )
    assert never_fits(EU_US, gang(site="mars")) == "no node of the fleet is in site mars"
    assert never_fits(EU_US, gang(gpus=2, gpu_models=("V100",))) == (
        "no site has 2 nodes with 2 GPU(s) each of one model that fit this job; "
        "the best site has 0 (20 wrong model)"
    )
    # one-node jobs are answered as before
    assert never_fits(EU_US, JobRequest("j", "a", gpu_count=5)) == (
        "no node in the fleet has 5 GPU(s) of one model that fit this job; the best node has 4"
    )


def test_default_policy_ages_a_job_by_its_size() -> None:
    snap = Snapshot((), (), now=10 * 3600.0)
    # same attained work; the big job has waited 10 h, the one-GPU job 4 h
    big = JobRequest("big", "a", gpu_count=4, node_count=2, submitted_at=0.0)
    small = JobRequest("small", "a", gpu_count=1, submitted_at=6 * 3600.0)
    # aging 1 + waited / (2 h x 8^3): the big job's 10 h count for less than the small's 4 h
    assert 1 + 10 * 3600 / (AGING_S * 8**AGING_EXPONENT) < 1 + 4 * 3600 / AGING_S
    assert [j.id for j in order_default([big, small], snap, 0)] == ["small", "big"]
    # two one-GPU jobs: the one that waited longer goes first, as before
    old = JobRequest("old", "a", gpu_count=1, submitted_at=0.0)
    assert [j.id for j in order_default([small, old], snap, 0)] == ["old", "small"]


def test_a_running_multi_gpu_job_is_stickier() -> None:
    table = gittins_table(())
    # attained work (s) of a running job and of a waiting job whose index is higher, by less
    # than MULTI_GPU_STICKY
    grid = [60.0 * 2**i for i in range(16)]
    pairs = [
        (a, b)
        for a in grid
        for b in grid
        if 1.05 < table.index(b) / table.index(a) < MULTI_GPU_STICKY * 0.95
    ]
    assert pairs
    ran, waits = pairs[0]
    snap = Snapshot((), ())  # no clock: no aging
    waiting = JobRequest("w", "a", gpu_count=1, attained_work_s=waits, submitted_at=1.0)
    for gpus, first in ((1, "w"), (4, "r")):
        running = JobRequest(
            "r", "a", gpu_count=gpus, attained_work_s=ran, running_on=("x",) * gpus
        )
        assert order_default([waiting, running], snap, 0)[0].id == first
