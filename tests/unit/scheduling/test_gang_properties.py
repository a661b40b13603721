"""Properties of gang placement: whole or not at all, one site, never a GPU twice."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.isolation import Isolation
from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan
from gpunet.core.scheduling.filters import FILTERS, GpuClass, first_failure
from gpunet.core.scheduling.model import AccountView

MODELS = ("V100", "P100", "K80")
CC = {"V100": (7, 0), "P100": (6, 0), "K80": (3, 7)}
POLICIES = ("fifo", "priority", "las", "default", "fifo_perf")
SITES = (None, "eu", "us")


def gpu_class(g: GpuView, n: NodeView) -> GpuClass:
    """Built from the views here, not with the planner's key, so indexing is checked too."""
    return GpuClass(
        g.model,
        g.memory_mb,
        g.compute_capability,
        g.price_per_hour,
        g.healthy,
        g.drained,
        n.online,
        g.power_w,
        tier=g.tier,
        reliability=g.reliability,
        isolation=n.isolation,
        has_runtime=bool(n.runtimes),
        private=n.private,
        owner=n.owner,
        owner_busy=g.owner_busy,
        interruptible_price=g.interruptible_price,
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes = tuple(
        NodeView(
            f"n{i}",
            online=draw(st.integers(0, 9)) > 0,
            site=draw(st.sampled_from(SITES)),
            owner=draw(st.sampled_from((None, "x", "y"))),
            isolation=draw(st.sampled_from(tuple(Isolation))),
            runtimes=draw(st.sampled_from(((), ("podman",)))),
            accepts_unisolated=draw(st.booleans()),
        )
        for i in range(draw(st.integers(1, 8)))
    )
    gpus = []
    for node in nodes:
        model = draw(st.sampled_from(MODELS))
        for k in range(draw(st.integers(0, 4))):
            # mostly one model per node, sometimes a second
            m = model if draw(st.integers(0, 4)) else draw(st.sampled_from(MODELS))
            gpus.append(
                GpuView(
                    f"{node.id}-g{k}",
                    node.id,
                    m,
                    draw(st.sampled_from((12000, 32000))),
                    CC[m],
                    busy=draw(st.booleans()),
                    healthy=draw(st.integers(0, 19)) > 0,
                    drained=draw(st.integers(0, 19)) == 0,
                    owner_busy=draw(st.integers(0, 19)) == 0,
                    price_per_hour=draw(st.sampled_from((None, Decimal("1"), Decimal("3")))),
                    reliability=draw(st.sampled_from((None, 0.5, 0.95))),
                )
            )
    tputs = {"a": {"V100": 3.0, "P100": 2.0, "K80": 1.0}, "b": {"V100": 1.0, "P100": 2.5}}
    keep = draw(st.booleans())
    accounts = {}
    if draw(st.booleans()):
        accounts["x"] = AccountView("x", max_gpus=draw(st.integers(0, 8)))
    return Snapshot(
        nodes, tuple(gpus), throughputs=tputs, now=1e5, keep_running=keep, accounts=accounts
    )


@st.composite
def job_lists(draw: st.DrawFn, snap: Snapshot) -> list[JobRequest]:
    jobs = []
    held: set[str] = set()
    busy_by_node: dict[str, list[str]] = {}
    for g in snap.gpus:
        if g.busy:
            busy_by_node.setdefault(g.node_id, []).append(g.id)
    for i in range(draw(st.integers(0, 8))):
        nodes_n = draw(st.sampled_from((1, 1, 2, 2, 3)))
        per = draw(st.integers(1, 3))
        running: tuple[str, ...] = ()
        if draw(st.booleans()):
            # a running gang: `per` busy GPUs on each of `nodes_n` nodes nobody else holds
            spare = [
                (n, [g for g in gs if g not in held]) for n, gs in sorted(busy_by_node.items())
            ]
            site_of = {n.id: n.site for n in snap.nodes}
            by_site: dict[str | None, list[list[str]]] = {}
            for n, gs in spare:
                if len(gs) >= per:
                    by_site.setdefault(site_of[n], []).append(gs[:per])
            fits = [m for _s, m in sorted(by_site.items(), key=str) if len(m) >= nodes_n]
            if fits:
                running = tuple(g for gs in fits[0][:nodes_n] for g in gs)
                held.update(running)
        # a third of the jobs set every kind of constraint; the rest only some, so that
        # gangs are often placeable
        strict = draw(st.integers(0, 2)) == 0

        def pick(options: tuple[object, ...], strict: bool = strict) -> object:
            # the first option sets no constraint
            return draw(st.sampled_from(options)) if strict else options[0]

        jobs.append(
            JobRequest(
                id=f"j{i}",
                account=draw(st.sampled_from(("x", "y"))),
                gpu_count=per,
                node_count=nodes_n,
                site=None if running else draw(st.sampled_from((None, None, "eu", "us"))),
                min_memory_mb=pick((0, 16000)),  # type: ignore[arg-type]
                gpu_models=() if running else draw(st.sampled_from(((), ("V100",), ("K80",)))),
                priority=draw(st.integers(0, 2)),
                submitted_at=float(i),
                job_class=draw(st.sampled_from((None, "a", "b"))),
                max_price=pick((None, Decimal("2"))),  # type: ignore[arg-type]
                min_reliability=pick((None, 0.9)),  # type: ignore[arg-type]
                attained_service_s=draw(st.floats(0, 1e5)),
                running_on=running,
                interruptible=draw(st.booleans()),
                isolation=pick(tuple(Isolation)),  # type: ignore[arg-type]
                owners=pick(((), ("x",))),  # type: ignore[arg-type]
                needs_runtime=pick((False, True)),  # type: ignore[arg-type]
            )
        )
    return jobs


@st.composite
def cases(draw: st.DrawFn) -> tuple[Snapshot, list[JobRequest], str, int]:
    snap = draw(snapshots())
    return snap, draw(job_lists(snap)), draw(st.sampled_from(POLICIES)), draw(st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_gangs_are_whole_in_one_site_and_every_gpu_fits(
    case: tuple[Snapshot, list[JobRequest], str, int],
) -> None:
    snap, jobs, policy, seed = case
    p = plan(snap, jobs, policy, seed=seed)
    gpus = {g.id: g for g in snap.gpus}
    nodes = {n.id: n for n in snap.nodes}
    by_id = {j.id: j for j in jobs}
    reclaimable = {g for j in jobs for g in j.running_on}
    used: list[str] = []
    for pl in p.placements:
        job = by_id[pl.job_id]
        ranks = pl.ranks()
        # whole: node_count distinct nodes, gpu_count GPUs on each, rank 0 first
        assert len(ranks) == job.node_count
        assert len({node for node, _ in ranks}) == job.node_count
        assert ranks[0] == (pl.node_id, pl.gpu_ids)
        assert all(len(ids) == job.gpu_count for _, ids in ranks)
        # one site (nodes without a site form one group), the job's own where it names one
        sites = {nodes[node].site for node, _ in ranks}
        assert len(sites) == 1
        assert job.site is None or sites == {job.site}
        for node, ids in ranks:
            for gid in ids:
                g = gpus[gid]
                assert g.node_id == node
                # every member GPU passes every filter
                assert first_failure(job, gpu_class(g, nodes[node]), FILTERS) is None
                assert not g.busy or gid in reclaimable
        used.extend(pl.all_gpu_ids)
    # never a GPU twice, within a gang or across placements
    assert len(used) == len(set(used))
    # admission counts every member: a quota is never exceeded by what starts here
    acct = snap.accounts.get("x")
    if acct is not None and acct.max_gpus is not None:
        started = sum(
            len(pl.all_gpu_ids)
            for pl in p.placements
            if by_id[pl.job_id].account == "x" and not by_id[pl.job_id].running_on
        )
        assert started <= acct.max_gpus
    # a running gang that loses any member's GPUs loses them all (it is preempted)
    placed = {pl.job_id: set(pl.all_gpu_ids) for pl in p.placements}
    for job in jobs:
        if job.running_on:
            kept = placed.get(job.id) == set(job.running_on)
            assert (job.id in p.preemptions) == (not kept)
            if snap.keep_running and job.id in placed:
                assert kept  # the live rule never moves a running job
    # every job is explained, every GPU counted once
    for job in jobs:
        exp = p.explanations[job.id]
        if exp.note == "its GPUs go to a job that outranks it":
            continue  # the live rule's short answer, with no counts
        assert exp.fitting_gpus + sum(exp.rejections.values()) == len(snap.gpus)
        if job.node_count > 1 or job.site is not None:
            assert exp.gang.startswith(f"needs {job.node_count} node")


@settings(max_examples=100, deadline=None)
@given(cases())
def test_gang_plans_are_deterministic(case: tuple[Snapshot, list[JobRequest], str, int]) -> None:
    snap, jobs, policy, seed = case
    a = plan(snap, jobs, policy, seed=seed)
    b = plan(snap, list(reversed(jobs)), policy, seed=seed)
    assert a.placements == b.placements
    assert sorted(a.preemptions) == sorted(b.preemptions)
    assert {k: (v.note, v.gang) for k, v in a.explanations.items()} == {
        k: (v.note, v.gang) for k, v in b.explanations.items()
    }
