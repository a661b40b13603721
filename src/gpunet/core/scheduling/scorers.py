"""Scorers: how good is this GPU class (and this node) for this job? Each returns 0..1.

Class-level scorers (throughput, work per price, work per joule) are computed once per job and
GPU class; node-level scorers (packing, locality) once per candidate node. A policy weighs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from gpunet.catalog import catalog
from gpunet.core.scheduling.filters import GpuClass
from gpunet.core.scheduling.model import JobRequest
from gpunet.core.tiers import wanted_tiers


@cache
def _catalog_speed(model: str) -> float:
    """Relative speed from the catalog's dense peak (bf16, else fp16, else fp32) TFLOPS."""
    spec = catalog().get(model)
    if spec is None:
        return 1.0
    return spec.bf16_tflops or spec.fp16_tflops or spec.fp32_tflops or 1.0


@cache
def _catalog_power(model: str) -> float | None:
    spec = catalog().get(model)
    return spec.tdp_w if spec else None


def expected_throughputs(
    table: dict[str, dict[str, float]], job: JobRequest, models: list[str]
) -> dict[str, float]:
    """Expected work per second of ``job`` on each model, from the best source there is.

    One source per job keeps the numbers comparable: the throughput table for the job's class,
    else the user's hint, else the catalog's peak TFLOPS. A model the source does not know gets
    the source's lowest value, so the job can still run there but does not prefer it.
    """
    row: dict[str, float] | None = None
    if job.job_class is not None:
        row = table.get(job.job_class)
    if not row and job.throughput_hint:
        row = dict(job.throughput_hint)
    if not row:
        return {m: _catalog_speed(m) for m in models}
    floor = min(row.values())
    return {m: row.get(m, floor) for m in models}


@dataclass(slots=True)
class ClassScores:
    """Class-level scores of one job on one GPU class, each in 0..1."""

    throughput: float
    price: float
    energy: float


def class_scores(tputs: dict[str, float], classes: list[GpuClass]) -> list[ClassScores]:
    """Throughput, work per unit of price and work per joule, each normalised to the best class."""
    best_tput = max((tputs[c.model] for c in classes), default=0.0) or 1.0
    per_price: list[float | None] = []
    per_joule: list[float | None] = []
    for c in classes:
        t = tputs[c.model]
        price = float(c.price_per_hour) if c.price_per_hour is not None else None
        per_price.append(t / price if price else None)
        power = c.power_w if c.power_w else _catalog_power(c.model)
        per_joule.append(t / power if power else None)
    best_price = max((v for v in per_price if v is not None), default=0.0) or 1.0
    best_joule = max((v for v in per_joule if v is not None), default=0.0) or 1.0
    out = []
    for c, pp, pj in zip(classes, per_price, per_joule, strict=True):
        out.append(
            ClassScores(
                throughput=tputs[c.model] / best_tput,
                # an unpriced GPU costs nothing: the best work per price there is
                price=1.0 if pp is None else pp / best_price,
                energy=0.5 if pj is None else pj / best_joule,
            )
        )
    return out


def packing(free_on_node: int, need: int) -> float:
    """Best fit: 1 when the job uses every free GPU of the node, less the more it strands."""
    return 1.0 / (1.0 + (free_on_node - need))


def locality(kept: int, need: int) -> float:
    """Share of the chosen GPUs the job already holds (staying put avoids a restart)."""
    return kept / need if need else 0.0


def tier_fit(job: JobRequest, gpu_tier: str | None) -> float:
    """1 on a GPU of a tier the job wants, 0 on another tier, 0.5 on an unassigned GPU
    (so a fleet without tiers is scored as before)."""
    if gpu_tier is None:
        return 0.5
    return 1.0 if gpu_tier in wanted_tiers(job.job_class, job.gpu_count) else 0.0


def reliability(gpu_reliability: float | None) -> float:
    """The node's reputation (0..1); 0.5 on an unrated node (so a fleet without reputations
    is scored as before)."""
    return 0.5 if gpu_reliability is None else min(1.0, max(0.0, gpu_reliability))
