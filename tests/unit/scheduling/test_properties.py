"""Property-based tests of the scheduler core."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.isolation import Isolation
from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, explain, plan
from gpunet.core.scheduling.filters import FILTERS, GpuClass, first_failure

MODELS = ("V100", "P100", "K80")
CC = {"V100": (7, 0), "P100": (6, 0), "K80": (3, 7)}
POLICIES = ("fifo", "priority", "las", "default", "fifo_perf")
ACCOUNTS = ("x", "y")


def gpu_class(g: GpuView, n: NodeView) -> GpuClass:
    """The class of one GPU, built here from the view (not with the planner's own key), so
    the properties check the planner's indexing too."""
    return GpuClass(
        g.model,
        g.memory_mb,
        g.compute_capability,
        g.price_per_hour,
        g.healthy,
        g.drained,
        n.online,
        g.power_w,
        isolation=n.isolation,
        has_runtime=bool(n.runtimes),
        private=n.private,
        owner=n.owner,
        owner_busy=g.owner_busy,
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    n_nodes = draw(st.integers(1, 5))
    nodes = tuple(
        NodeView(
            f"n{i}",
            online=draw(st.booleans()) or i == 0,
            owner=draw(st.sampled_from((None, *ACCOUNTS))),
            isolation=draw(st.sampled_from(tuple(Isolation))),
            runtimes=draw(st.sampled_from(((), ("podman",), ("docker", "podman")))),
            accepts_unisolated=draw(st.booleans()),
        )
        for i in range(n_nodes)
    )
    gpus = []
    for node in nodes:
        for k in range(draw(st.integers(0, 4))):
            m = draw(st.sampled_from(MODELS))
            gpus.append(
                GpuView(
                    f"{node.id}-g{k}",
                    node.id,
                    m,
                    draw(st.sampled_from((12000, 16000, 32000))),
                    CC[m],
                    busy=draw(st.booleans()),
                    healthy=draw(st.integers(0, 9)) > 0,
                    drained=draw(st.integers(0, 9)) == 0,
                    owner_busy=draw(st.integers(0, 9)) == 0,
                    price_per_hour=draw(st.sampled_from((None, Decimal("1"), Decimal("3")))),
                )
            )
    tputs = {"a": {"V100": 3.0, "P100": 2.0, "K80": 1.0}, "b": {"V100": 1.0, "P100": 2.5}}
    return Snapshot(nodes, tuple(gpus), throughputs=tputs, now=draw(st.floats(0, 1e6)))


@st.composite
def job_lists(draw: st.DrawFn, snap: Snapshot) -> list[JobRequest]:
    jobs = []
    held: set[str] = set()
    for i in range(draw(st.integers(0, 10))):
        running: tuple[str, ...] = ()
        busy = [g for g in snap.gpus if g.busy and g.id not in held]
        if busy and draw(st.booleans()):
            running = (busy[0].id,)
            held.add(busy[0].id)
        jobs.append(
            JobRequest(
                id=f"j{i}",
                account=draw(st.sampled_from(ACCOUNTS)),
                gpu_count=draw(st.integers(1, 3)) if not running else 1,
                min_memory_mb=draw(st.sampled_from((0, 16000))),
                gpu_models=draw(st.sampled_from(((), ("V100",), ("P100", "K80")))),
                min_compute_capability=draw(st.sampled_from((None, (6, 0)))),
                priority=draw(st.integers(0, 2)),
                submitted_at=draw(st.floats(0, 1e5)),
                job_class=draw(st.sampled_from((None, "a", "b"))),
                max_price=draw(st.sampled_from((None, Decimal("2")))),
                attained_service_s=draw(st.floats(0, 1e5)),
                running_on=running,
                isolation=draw(st.sampled_from(tuple(Isolation))),
                owners=draw(st.sampled_from(((), ("x",), ("x", "y")))),
                needs_runtime=draw(st.integers(0, 3)) == 0,
            )
        )
    return jobs


@st.composite
def cases(draw: st.DrawFn) -> tuple[Snapshot, list[JobRequest], str, int]:
    snap = draw(snapshots())
    return snap, draw(job_lists(snap)), draw(st.sampled_from(POLICIES)), draw(st.integers(0, 3))


@settings(max_examples=150, deadline=None)
@given(cases())
def test_plan_invariants(case: tuple[Snapshot, list[JobRequest], str, int]) -> None:
    snap, jobs, policy, seed = case
    p = plan(snap, jobs, policy, seed=seed)
    gpus = {g.id: g for g in snap.gpus}
    nodes = {n.id: n for n in snap.nodes}
    by_id = {j.id: j for j in jobs}
    reclaimable = {g for j in jobs for g in j.running_on}
    used: list[str] = []
    for pl in p.placements:
        job = by_id[pl.job_id]
        assert len(pl.gpu_ids) == job.gpu_count
        for gid in pl.gpu_ids:
            g = gpus[gid]
            n = nodes[g.node_id]
            # every filter holds for every GPU of every placement
            cls = gpu_class(g, n)
            assert first_failure(job, cls, FILTERS) is None
            # and, stated on their own, the node's isolation, runtimes and owner fit the job
            assert n.isolation >= job.isolation
            assert not job.needs_runtime or n.runtimes
            assert not job.owners or n.owner in job.owners
            private = n.owner is not None and n.isolation is Isolation.NONE
            assert not private or n.accepts_unisolated or n.owner == job.account
            assert g.node_id == pl.node_id
            assert not g.busy or gid in reclaimable
        used.extend(pl.gpu_ids)
    # no GPU is given to two jobs
    assert len(used) == len(set(used))
    # explanations count every GPU exactly once, for every job
    for job in jobs:
        exp = p.explanations[job.id]
        assert exp.fitting_gpus + sum(exp.rejections.values()) == len(snap.gpus)
    # a job that loses the GPUs it holds is reported as preempted
    placed = {pl.job_id: set(pl.gpu_ids) for pl in p.placements}
    for job in jobs:
        if job.running_on:
            assert (job.id in p.preemptions) == (placed.get(job.id) != set(job.running_on))


@settings(max_examples=60, deadline=None)
@given(cases())
def test_plan_is_deterministic(case: tuple[Snapshot, list[JobRequest], str, int]) -> None:
    snap, jobs, policy, seed = case
    a = plan(snap, jobs, policy, seed=seed)
    b = plan(snap, list(reversed(jobs)), policy, seed=seed)
    assert a.placements == b.placements
    assert a.preemptions == sorted(a.preemptions, key=[j.id for j in jobs].index)
    assert {k: v.rejections for k, v in a.explanations.items()} == {
        k: v.rejections for k, v in b.explanations.items()
    }


@settings(max_examples=120, deadline=None)
@given(cases())
def test_explanations_match_a_per_gpu_count(
    case: tuple[Snapshot, list[JobRequest], str, int],
) -> None:
    # Classes share node owners only where no filter reads them, and an owner's view of its
    # private nodes is derived from a stranger's: neither may change what is counted.
    snap, jobs, policy, seed = case
    nodes = {n.id: n for n in snap.nodes}
    planned = plan(snap, jobs, policy, seed=seed).explanations
    for job in jobs:
        expected: dict[str, int] = {}
        for g in snap.gpus:
            n = nodes[g.node_id]
            cls = gpu_class(g, n)
            why = first_failure(job, cls, FILTERS) or ("busy" if g.busy else None)
            if why:
                expected[why] = expected.get(why, 0) + 1
        # one plan shares views between jobs; its busy counts include GPUs taken in the plan
        in_plan = {r: n for r, n in planned[job.id].rejections.items() if r != "busy"}
        assert in_plan == {r: n for r, n in expected.items() if r != "busy"}
        if not job.running_on:
            assert explain(snap, job, "fifo").rejections == expected
