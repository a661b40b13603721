"""Synthetic traces for capacity planning: Gavel-style, or drawn from the Philly distribution.

Both draw Poisson arrivals at ``rate_per_h`` and a job type uniformly from the throughput
table; work is ``duration x throughput on the reference model`` (V100 when the table has it,
as in Gavel: a job's duration is its runtime on a dedicated V100).
"""

from __future__ import annotations

import csv
import math
import random
from functools import cache
from importlib import resources

from gpunet.errors import ValidationFailed
from gpunet.sim.fleet import class_key
from gpunet.sim.traces import TraceJob

# Gavel's generator: with probability 0.8 log-uniform 10^1.5..10^3 min, else 10^3..10^4 min
_SHORT = (10**1.5 * 60, 10**3 * 60)
_LONG = (10**3 * 60, 10**4 * 60)
# Gavel's multi-GPU mix when enabled: 70% 1 GPU, 10% 2, 15% 4, 5% 8
_SCALES = ((0.70, 1), (0.10, 2), (0.15, 4), (0.05, 8))


@cache
def philly_distribution() -> tuple[tuple[float, int], ...]:
    """Gavel's Philly-derived ``(duration_s, num_gpus)`` pairs."""
    text = resources.files("gpunet.data.gavel").joinpath("philly_job_distribution.csv")
    rows = csv.DictReader(text.read_text().splitlines())
    return tuple((float(r["duration_s"]), int(r["num_gpus"])) for r in rows)


def _types_by_scale(table: dict[str, dict[str, float]]) -> dict[int, list[str]]:
    """Job types (without the ``xN`` suffix) available at each GPU count."""
    base = sorted(k for k in table if " x" not in k)
    out: dict[int, list[str]] = {}
    for scale in (1, 2, 4, 8):
        types = [t for t in base if class_key(t, scale) in table]
        if types:
            out[scale] = types
    if 1 not in out:
        raise ValidationFailed("throughputs", "the table has no single-GPU job types")
    return out


def _work(table: dict[str, dict[str, float]], cls: str, duration_s: float) -> float:
    row = table[cls]
    ref = row.get("V100") or max(row.values())
    return float(max(1, int(duration_s * ref)))


def generate(
    kind: str,
    n_jobs: int,
    rate_per_h: float,
    table: dict[str, dict[str, float]],
    *,
    seed: int = 0,
    multi_gpu: bool = False,
) -> list[TraceJob]:
    """``n_jobs`` jobs of ``kind`` "gavel" or "philly"; deterministic for a given seed."""
    if kind not in ("gavel", "philly"):
        raise ValidationFailed("kind", f"unknown trace kind {kind!r}; use gavel or philly")
    if n_jobs < 1:
        raise ValidationFailed("jobs", "must be at least 1")
    if rate_per_h <= 0:
        raise ValidationFailed("rate", "must be positive (jobs per hour)")
    rng = random.Random(seed)
    types = _types_by_scale(table)
    philly = philly_distribution() if kind == "philly" else ()
    jobs: list[TraceJob] = []
    t = 0.0
    for i in range(n_jobs):
        if kind == "gavel":
            lo, hi = _SHORT if rng.random() < 0.8 else _LONG
            duration = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            scale = 1
            if multi_gpu:
                u, acc = rng.random(), 0.0
                for p, s in _SCALES:
                    acc += p
                    if u < acc:
                        scale = s
                        break
        else:
            duration, scale = philly[rng.randrange(len(philly))]
        # Philly counts above the table's largest gang run as the largest the table knows
        scale = max((s for s in types if s <= scale), default=1)
        job_type = rng.choice(types[scale])
        cls = class_key(job_type, scale)
        jobs.append(
            TraceJob(
                id=str(i),
                arrival_s=round(t, 3),
                job_class=job_type,
                gpu_count=scale,
                total_steps=_work(table, cls, duration),
            )
        )
        t += rng.expovariate(rate_per_h / 3600.0)
    return jobs
