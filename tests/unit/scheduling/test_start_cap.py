"""``plan(max_starts=K)``: a plan stops considering jobs that hold no GPUs once K of them are
placed (a live pass applies at most that many starts), while jobs that hold GPUs are still
considered, so none is stopped for want of a look."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan

POLICIES = ["default", "fifo", "priority", "las"]


def fleet(n: int, per_node: int = 2, *, live: bool = True) -> Snapshot:
    nodes = tuple(NodeView(f"n{i}") for i in range(n))
    gpus = tuple(
        GpuView(f"n{i}/{k}", f"n{i}", "A100-80GB", 80_000, (8, 0))
        for i in range(n)
        for k in range(per_node)
    )
    return Snapshot(nodes, gpus, keep_running=live)


def busy(snap: Snapshot, ids: set[str]) -> Snapshot:
    return replace(snap, gpus=tuple(replace(g, busy=g.id in ids) for g in snap.gpus))


def starts(p: object, jobs: list[JobRequest]) -> list[str]:
    holding = {j.id for j in jobs if j.running_on}
    return [pl.job_id for pl in p.placements if pl.job_id not in holding]  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_capped_plan_starts_the_first_jobs_in_order_and_says_it_left_some(policy: str) -> None:
    snap = fleet(4)
    jobs = [JobRequest(f"w{i}", "a", submitted_at=float(i)) for i in range(6)]
    full = plan(snap, jobs, policy)
    capped = plan(snap, jobs, policy, max_starts=2)
    assert len(starts(full, jobs)) == 6 and not full.capped
    assert starts(capped, jobs) == starts(full, jobs)[:2] and capped.capped
    left = [j.id for j in jobs if j.id not in starts(capped, jobs)]
    assert all(capped.explanations[j].placed is None for j in left)
    assert all("not considered" in capped.explanations[j].note for j in left)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_running_job_after_the_cap_is_still_kept(policy: str) -> None:
    """Two on-demand jobs outrank the interruptible r0, so they come before it in the live
    order; with room for one start only, the second is not considered, and r0 must still be
    looked at and kept: a job left out of the plan would count as stopped."""
    snap = busy(fleet(3, per_node=1), {"n0/0"})
    r0 = JobRequest("r0", "a", running_on=("n0/0",), interruptible=True, submitted_at=0.0)
    waiting = [JobRequest(f"w{i}", "b", submitted_at=10.0 + i) for i in range(2)]
    jobs = [r0, *waiting]
    p = plan(snap, jobs, policy, max_starts=1)
    assert starts(p, jobs) == ["w0"] and p.capped
    assert p.preemptions == []
    kept = {pl.job_id: pl.gpu_ids for pl in p.placements}
    assert kept["r0"] == ("n0/0",)


def job_lists() -> st.SearchStrategy[tuple[int, int, list[JobRequest]]]:
    """(nodes, cap, jobs): waiting jobs of 1-2 GPUs and priorities 0-2, some interruptible, and
    running jobs on the first GPUs of the fleet."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[int, int, list[JobRequest]]:
        n = draw(st.integers(1, 5))
        cap = draw(st.integers(0, 8))
        jobs: list[JobRequest] = []
        n_running = draw(st.integers(0, n))
        for i in range(n_running):
            jobs.append(
                JobRequest(
                    f"r{i}",
                    "a",
                    running_on=(f"n{i}/0",),
                    interruptible=draw(st.booleans()),
                    priority=draw(st.integers(0, 2)),
                    submitted_at=float(i),
                )
            )
        for i in range(draw(st.integers(0, 12))):
            jobs.append(
                JobRequest(
                    f"w{i}",
                    draw(st.sampled_from(["a", "b"])),
                    gpu_count=draw(st.integers(1, 2)),
                    interruptible=draw(st.booleans()),
                    priority=draw(st.integers(0, 2)),
                    submitted_at=100.0 + i,
                )
            )
        return n, cap, jobs

    return build()


@settings(max_examples=150, deadline=None)
@given(case=job_lists(), policy=st.sampled_from(POLICIES))
def test_a_cap_never_above_the_starts_changes_nothing_and_a_low_one_only_limits(
    case: tuple[int, int, list[JobRequest]], policy: str
) -> None:
    n, cap, jobs = case
    snap = busy(fleet(n), {f"n{i}/0" for i in range(n) if f"r{i}" in {j.id for j in jobs}})
    full = plan(snap, jobs, policy)
    capped = plan(snap, jobs, policy, max_starts=cap)
    assert len(starts(capped, jobs)) <= cap
    if len(starts(full, jobs)) <= cap:  # the cap never bit: the very same plan
        assert capped.placements == full.placements
        assert capped.preemptions == full.preemptions
    if len(starts(capped, jobs)) < cap:  # room for more starts: every job was considered
        assert not capped.capped
    for pl in capped.placements:  # a running job is kept where it runs or stopped, as always
        job = next(j for j in jobs if j.id == pl.job_id)
        assert not job.running_on or pl.gpu_ids == job.running_on
    # every job that holds GPUs is either kept or stopped for a job this plan starts
    kept = {pl.job_id for pl in capped.placements}
    for j in jobs:
        if j.running_on and j.id not in kept:
            assert j.id in capped.preemptions
            assert capped.preempted_for.get(j.id) in set(starts(capped, jobs))
