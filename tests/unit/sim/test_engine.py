"""Simulator cases small enough to compute by hand."""

from __future__ import annotations

import pytest

from gpunet.errors import ValidationFailed
from gpunet.sim import SimConfig, TraceJob, metrics, parse_fleet, simulate

TABLE = {
    "a": {"V100": 2.0, "K80": 1.0},
    "b": {"V100": 3.0, "K80": 1.0},
    "flat": {"V100": 1.0, "K80": 1.0},
    "a x2": {"V100": 3.5},
}
TWO_TYPES = parse_fleet("1xV100,1xK80")


def jcts(policy: str, jobs: list[TraceJob], fleet: str = "1xV100,1xK80", **kw: object) -> dict:
    r = simulate(jobs, parse_fleet(fleet), TABLE, SimConfig(policy=policy, **kw))  # type: ignore[arg-type]
    return {o.id: o.jct_s for o in r.outcomes}


TWO_JOBS = [
    TraceJob("A", 0.0, "a", total_steps=3600),  # 1800 s on the V100
    TraceJob("B", 0.0, "b", total_steps=3600),  # 3600 s on the K80, 1200 s on the V100
]


@pytest.mark.parametrize("policy", ["fifo", "fifo_perf", "gavel-compat"])
def test_two_jobs_two_types(policy: str) -> None:
    # A (FIFO first) takes the V100 (2.0 > 1.0), B the K80. A ends at 1800 s, a round
    # boundary; B has done 1800 steps and moves to the V100 for the other 1800 at 3/s: 600 s.
    got = jcts(policy, TWO_JOBS)
    assert got == pytest.approx({"A": 1800.0, "B": 2400.0})


def test_preemption_cost_is_charged_on_restart() -> None:
    r = simulate(TWO_JOBS, TWO_TYPES, TABLE, SimConfig(policy="fifo", preemption_cost_s=60))
    got = {o.id: o.jct_s for o in r.outcomes}
    # B's move to the V100 costs 60 s before it makes progress again
    assert got == pytest.approx({"A": 1800.0, "B": 2460.0})
    assert r.preemptions == 1
    m = metrics(r)
    assert m["avg_jct_s"] == pytest.approx(2130.0)
    assert m["makespan_s"] == pytest.approx(2460.0)
    # busy: A 1800 s on the V100, B 1800 s on the K80 then 660 s on the V100
    assert m["utilization"] == pytest.approx((1800 + 1800 + 660) / (2 * 2460))


def test_a_restart_cost_keeps_a_job_where_it_is_when_moving_gains_little() -> None:
    table = {**TABLE, "b": {"V100": 1.5, "K80": 1.0}}
    jobs = [TWO_JOBS[0], TraceJob("B", 0.0, "b", total_steps=3600)]
    free = simulate(jobs, TWO_TYPES, table, SimConfig(policy="fifo"))
    costly = simulate(jobs, TWO_TYPES, table, SimConfig(policy="fifo", preemption_cost_s=300))
    # without a cost B moves to the V100 at 1800 s (1800 steps left at 1.5/s: 1200 s)
    assert {o.id: o.jct_s for o in free.outcomes}["B"] == pytest.approx(3000.0)
    # with 300 s per restart (most of a 360 s round) the move is not worth it: B stays
    assert {o.id: o.jct_s for o in costly.outcomes}["B"] == pytest.approx(3600.0)
    assert costly.preemptions == 0


def test_gavel_loop_waits_for_the_recompute_interval() -> None:
    jobs = [
        TraceJob("A", 10.0, "flat", total_steps=1000),
        TraceJob("B", 100.0, "flat", total_steps=360),
        TraceJob("C", 5000.0, "flat", total_steps=10),
    ]
    # Gavel: A runs 10..1010. B arrived at 100, but the allocation may only be recomputed
    # 1920 s after the last one (t=10); when A ends nothing else is allocated, so time jumps
    # to C's arrival at 5000, where B (first in FIFO) runs to 5360; C follows at 5360..5370.
    assert jcts("gavel-compat", jobs, "1xV100") == pytest.approx(
        {"A": 1000.0, "B": 5260.0, "C": 370.0}
    )
    # gpunet's loop fills the GPU as soon as A ends
    assert jcts("fifo", jobs, "1xV100") == pytest.approx({"A": 1000.0, "B": 1270.0, "C": 10.0})


def test_default_policy_preempts_a_long_job_for_a_new_one() -> None:
    jobs = [
        TraceJob("L", 0.0, "flat", total_steps=100_000),
        TraceJob("S", 30_000.0, "flat", total_steps=600),
    ]
    r = simulate(jobs, parse_fleet("1xV100"), TABLE, SimConfig("default", preemption_cost_s=60))
    got = {o.id: o.jct_s for o in r.outcomes}
    # S arrives after L has run 30000 s: S's index is higher, so L yields at once; S ends at
    # 30600; L resumes, loses 60 s to the restart, and needs 70000 s more -> ends at 100660.
    assert got == pytest.approx({"S": 600.0, "L": 100_660.0})
    assert r.preemptions == 1
    # FIFO keeps L running: S waits for it
    assert jcts("fifo", jobs, "1xV100") == pytest.approx({"L": 100_000.0, "S": 70_600.0})


def test_window_measures_only_those_jobs() -> None:
    jobs = [TraceJob(str(i), 1000.0 * i, "flat", total_steps=100) for i in range(5)]
    r = simulate(jobs, parse_fleet("1xV100"), TABLE, SimConfig("fifo", window=(1, 3)))
    assert sorted(o.id for o in r.outcomes) == ["1", "2", "3"]
    assert metrics(r)["jobs_measured"] == 3
    with pytest.raises(ValidationFailed):
        simulate(jobs, parse_fleet("1xV100"), TABLE, SimConfig("fifo", window=(9, 12)))


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(ValidationFailed) as e:
        simulate([TraceJob("x", 0, "nope", total_steps=1)], TWO_TYPES, TABLE, SimConfig())
    assert "nope" in e.value.message
    with pytest.raises(ValidationFailed) as e:
        simulate(TWO_JOBS, TWO_TYPES, TABLE, SimConfig(policy="bogus"))
    assert e.value.field == "policy"
    with pytest.raises(ValidationFailed) as e:
        simulate([TraceJob("x", 0, "a", gpu_count=2, total_steps=1)], TWO_TYPES, TABLE, SimConfig())
    # more GPUs than a node has: a gang of one-GPU nodes, and the fleet has one V100 node
    assert "2 nodes with 1 GPU(s)" in e.value.message
    with pytest.raises(ValidationFailed) as e:
        simulate(TWO_JOBS, TWO_TYPES, TABLE, SimConfig(round_s=0))
    assert e.value.field == "round"


def test_a_fleet_the_table_does_not_cover_names_the_models_and_the_way_out() -> None:
    with pytest.raises(ValidationFailed) as e:
        simulate(TWO_JOBS, parse_fleet("1xH100"), TABLE, SimConfig())
    msg = e.value.message
    assert "(H100-80GB)" in msg and "K80, V100" in msg and "--throughputs" in msg
