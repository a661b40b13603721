"""Multi-node jobs in the simulator, small enough to compute by hand."""

from __future__ import annotations

import pytest

from gpunet.sim import SimConfig, TraceJob, parse_fleet, simulate
from gpunet.sim.engine import split

TABLE = {
    "t": {"V100": 0.5, "K80": 0.25},
    "t x4": {"V100": 1.0, "K80": 0.5},
    "t x8": {"V100": 2.0, "K80": 1.0},
}


def test_split_into_nodes() -> None:
    assert split(4, [4, 4]) == (1, 4)
    assert split(8, [4, 4, 4]) == (2, 4)
    assert split(8, [8, 4]) == (1, 8)
    assert split(12, [8, 4]) == (3, 4)  # the largest node size that divides the count
    assert split(6, [4]) == (1, 6)  # no split: never_fits then names the job


@pytest.mark.parametrize("policy", ["fifo", "default", "gavel-compat"])
def test_a_two_node_job_waits_for_both_nodes(policy: str) -> None:
    # 8 V100 on nodes of 4. A (4 GPUs, 3600 steps at 1/s) starts at 0 on one node; G (8 GPUs:
    # two nodes x 4, 7200 steps at 2/s) arrives at 10 and cannot start on the one free node
    # (all or nothing); it starts when A ends at 3600 and runs 3600 s: JCT 7190.
    fleet = parse_fleet("8xV100", gpus_per_node=4)
    jobs = [
        TraceJob("A", 0.0, "t", gpu_count=4, total_steps=3600),
        TraceJob("G", 10.0, "t", gpu_count=8, total_steps=7200),
    ]
    r = simulate(jobs, fleet, TABLE, SimConfig(policy=policy))
    got = {o.id: o.jct_s for o in r.outcomes}
    assert got == pytest.approx({"A": 3600.0, "G": 7190.0})
    # G held all 8 GPUs for 3600 s, A 4 for 3600 s
    assert r.busy_gpu_s == pytest.approx(4 * 3600 + 8 * 3600)


def test_a_gang_of_mixed_models_runs_at_the_slowest_pace() -> None:
    # one V100 node and one K80 node of 4: the 8-GPU job must span both and runs at the
    # K80's 1 step/s: 3600 steps take 3600 s (not 1800 s at the V100's 2/s)
    fleet = parse_fleet("4xV100,4xK80", gpus_per_node=4)
    jobs = [TraceJob("G", 0.0, "t", gpu_count=8, total_steps=3600)]
    r = simulate(jobs, fleet, TABLE, SimConfig(policy="fifo"))
    assert [o.jct_s for o in r.outcomes] == pytest.approx([3600.0])


def test_a_one_gpu_job_waits_behind_a_gang_or_takes_a_free_node() -> None:
    # G (8 GPUs, 2 nodes) runs 0..3600; B (1 GPU, 900 steps at 0.5/s = 1800 s) arrives at 1:
    # FIFO keeps G on both nodes, so B waits until 3600: JCT 3599 + 1800 = 5399. On 12 GPUs
    # (3 nodes) B takes the third node at once: JCT 1800.
    jobs = [
        TraceJob("G", 0.0, "t", gpu_count=8, total_steps=7200),
        TraceJob("B", 1.0, "t", gpu_count=1, total_steps=900),
    ]
    for fleet, want in (("8xV100", 5399.0), ("12xV100", 1800.0)):
        r = simulate(jobs, parse_fleet(fleet, gpus_per_node=4), TABLE, SimConfig("fifo"))
        got = {o.id: o.jct_s for o in r.outcomes}
        assert got == pytest.approx({"G": 3600.0, "B": want})
