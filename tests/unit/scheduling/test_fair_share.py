"""Decayed fair-share memory and the default policy's use of priority and fair share."""

from __future__ import annotations

import math

import pytest

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, plan
from gpunet.core.scheduling.fairshare import Usage, decayed_gpu_seconds
from gpunet.core.scheduling.policies import order_default, share_factors

H = 3600.0


def test_use_decays_by_half_each_half_life() -> None:
    now = 10 * H
    recent = decayed_gpu_seconds([Usage("a", 1, now - 60, now)], now, H)["a"]
    old = decayed_gpu_seconds([Usage("a", 1, now - H - 60, now - H)], now, H)["a"]
    assert recent == pytest.approx(60, rel=1e-2)
    assert old == pytest.approx(recent / 2, rel=1e-6)


def test_gpus_multiply_and_spans_add_up_to_the_integral() -> None:
    now = 5 * H
    two = decayed_gpu_seconds([Usage("a", 2, 0, now)], now, H)["a"]
    k = math.log(2) / H
    assert two == pytest.approx(2 * (1 - math.exp(-k * now)) / k)
    split = decayed_gpu_seconds([Usage("a", 2, 0, H), Usage("a", 2, H, now)], now, H)["a"]
    assert split == pytest.approx(two)
    # open spans count until now, future and empty spans nothing
    assert decayed_gpu_seconds([Usage("b", 1, now + 1, now + 5)], now, H) == {}
    with pytest.raises(ValueError):
        decayed_gpu_seconds([], now, 0)


def job(i: int, account: str = "a", **kw: object) -> JobRequest:
    return JobRequest(f"j{i}", account, submitted_at=float(i), **kw)  # type: ignore[arg-type]


def test_default_policy_puts_priority_first_then_on_demand() -> None:
    snap = Snapshot((), (), now=1000.0)
    jobs = [
        job(0, attained_service_s=0.0),
        job(1, priority=1, attained_service_s=1e6),  # a long job, yet priority goes first
        job(2, interruptible=True),
        job(3),
    ]
    order = [j.id for j in order_default(jobs, snap, 0)]
    assert order[0] == "j1"
    assert order[-1] == "j2"


def test_fair_share_favours_the_account_that_used_less() -> None:
    usage = {"heavy": 100.0 * H, "light": 1.0 * H}
    snap = Snapshot((), (), now=10.0, account_usage=usage)
    jobs = [job(0, "heavy"), job(1, "light")]
    assert [j.id for j in order_default(jobs, snap, 0)] == ["j1", "j0"]
    f = share_factors(jobs, usage)
    assert f["heavy"] > f["light"] >= 1.0
    assert share_factors(jobs, {}) == {}  # no memory: the index alone


def test_live_plan_gives_the_last_gpu_to_the_lighter_account() -> None:
    snap = Snapshot(
        (NodeView("n"),),
        (GpuView("n/0", "n", "A100-80GB", 80_000, (8, 0)),),
        now=10.0,
        account_usage={"heavy": 50 * H},
    )
    p = plan(snap, [job(0, "heavy"), job(1, "light")], "default")
    assert [pl.job_id for pl in p.placements] == ["j1"]
