"""Metrics of a simulation run, as a dict (for JSON and tables), and plots."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from gpunet.sim.engine import SimResult


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def metrics(result: SimResult) -> dict[str, float | int | str]:
    """The run's figures; JCTs over the measured jobs, utilization over the whole run."""
    jcts = [o.jct_s for o in result.outcomes]
    floors = [o.floor_s for o in result.outcomes]
    span = result.end_s - result.start_s
    decisions = result.decision_times_s
    measured_start = min((o.arrival_s for o in result.outcomes), default=result.start_s)
    measured_end = max((o.finish_s for o in result.outcomes), default=result.end_s)
    return {
        "policy": result.policy,
        "jobs_measured": len(jcts),
        "jobs_unfinished": result.unfinished,
        "avg_jct_s": statistics.fmean(jcts) if jcts else math.nan,
        "median_jct_s": percentile(jcts, 50),
        "p99_jct_s": percentile(jcts, 99),
        "floor_avg_jct_s": statistics.fmean(floors) if floors else math.nan,
        "makespan_s": measured_end - measured_start,
        "utilization": result.busy_gpu_s / (result.gpu_count * span) if span > 0 else 0.0,
        "preemptions": result.preemptions,
        "decisions": len(decisions),
        "decision_time_s": statistics.fmean(decisions) if decisions else 0.0,
        "decision_time_max_s": max(decisions, default=0.0),
        "decision_time_total_s": sum(decisions),
    }


def plot(result: SimResult, path: str | Path) -> None:
    """Draw the JCT CDF and utilization over time to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    jcts = sorted(o.jct_s / 3600 for o in result.outcomes)
    if jcts:
        ax1.plot(jcts, [(i + 1) / len(jcts) for i in range(len(jcts))])
    ax1.set_xscale("log")
    ax1.set_xlabel("job completion time (h)")
    ax1.set_ylabel("fraction of jobs")
    ax1.set_title(f"JCT CDF ({result.policy})")
    if result.timeline:
        ts = [(t - result.start_s) / 3600 for t, _ in result.timeline]
        us = [b / result.gpu_count for _, b in result.timeline]
        ax2.step(ts, us, where="post")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("time (h)")
    ax2.set_ylabel("GPUs busy (fraction)")
    ax2.set_title("utilization")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
