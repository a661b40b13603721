"""The tier rule: training | inference | secondary | retire for each GPU, with its reasons,
from its benchmark score within the fleet, memory, health history and work per joule."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from gpunet.core.benchmark import BELOW_REFERENCE_PCT

RETIRE = "retire"
LADDER = ("training", "inference", "secondary", RETIRE)

TRAINING_MIN_PERCENTILE = 50.0  # the faster half of the fleet trains
TRAINING_MIN_MEMORY_MB = 40_000
INFERENCE_MIN_MEMORY_MB = 16_000
RETIRE_BELOW_PCT = 50.0  # a GPU at less than half its reference is not worth its power
RETIRE_AFTER_FAILURES = 3  # health failures in its history
POOR_ENERGY_SHARE = 0.5  # work per joule below half the fleet median costs a step


@dataclass(frozen=True, slots=True)
class TierInput:
    gpu_id: str
    model: str
    memory_mb: int
    current: str | None  # current tier
    score_pct: float | None  # latest benchmark, % of reference; None: never benchmarked
    throughput_tflops: float  # achieved (reference x score)
    tdp_w: float | None
    health_failures: int = 0


@dataclass(frozen=True, slots=True)
class Proposal:
    gpu_id: str
    current: str | None
    proposed: str
    reasons: tuple[str, ...]
    percentile: float
    work_per_joule: float | None = None  # TFLOP per joule (TFLOPS / W)

    @property
    def moves(self) -> bool:
        return self.proposed != self.current

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_id": self.gpu_id,
            "current": self.current,
            "proposed": self.proposed,
            "moves": self.moves,
            "reasons": list(self.reasons),
            "percentile": self.percentile,
            "work_per_joule": self.work_per_joule,
        }


_INFERENCE_WORDS = ("infer", "serv", "predict", "embed")


def wanted_tiers(job_class: str | None, gpu_count: int) -> tuple[str, ...]:
    """The duty tiers a job belongs on: inference-like classes and small (one-GPU) jobs of
    no class on inference or secondary GPUs; training classes and multi-GPU jobs on training."""
    cls = (job_class or "").lower()
    if any(w in cls for w in _INFERENCE_WORDS):
        return ("inference", "secondary")
    if job_class is None and gpu_count <= 1:
        return ("inference", "secondary")
    return ("training",)


def _lower(tier: str) -> str:
    return LADDER[min(LADDER.index(tier) + 1, len(LADDER) - 1)]


@dataclass
class _Why:
    tier: str
    reasons: list[str] = field(default_factory=list)


def propose(fleet: list[TierInput]) -> list[Proposal]:
    """A proposal for every GPU of ``fleet``; each carries at least one reason."""
    if not fleet:
        return []
    xs = sorted(g.throughput_tflops for g in fleet)
    wpj = {g.gpu_id: g.throughput_tflops / g.tdp_w for g in fleet if g.tdp_w and g.tdp_w > 0}
    median_wpj = statistics.median(wpj.values()) if wpj else None
    out = []
    for g in fleet:
        pct = round(100.0 * sum(1 for x in xs if x <= g.throughput_tflops) / len(xs), 1)
        w = _base(g, pct)
        if g.score_pct is None:
            w.reasons.append("never benchmarked: judged on its model's reference")
        elif g.score_pct < RETIRE_BELOW_PCT:
            w.tier = RETIRE
            w.reasons.append(
                f"benchmarks at {g.score_pct:g}% of reference (below {RETIRE_BELOW_PCT:g}%)"
            )
        elif g.score_pct < BELOW_REFERENCE_PCT:
            w.tier = _lower(w.tier)
            w.reasons.append(
                f"benchmarks at {g.score_pct:g}% of reference (below "
                f"{BELOW_REFERENCE_PCT:g}%): one tier lower, {w.tier}"
            )
        mine = wpj.get(g.gpu_id)
        if mine is not None and median_wpj and mine < POOR_ENERGY_SHARE * median_wpj:
            w.tier = _lower(w.tier)
            w.reasons.append(
                f"work per joule {mine:.3f} TFLOP/J is below half the fleet median "
                f"{median_wpj:.3f}: one tier lower, {w.tier}"
            )
        if g.health_failures >= RETIRE_AFTER_FAILURES:
            w.tier = RETIRE
            w.reasons.append(f"failed health {g.health_failures} times")
        out.append(
            Proposal(
                g.gpu_id,
                g.current,
                w.tier,
                tuple(w.reasons),
                pct,
                round(mine, 4) if mine is not None else None,
            )
        )
    return out


def _base(g: TierInput, pct: float) -> _Why:
    gb = g.memory_mb / 1000
    if pct >= TRAINING_MIN_PERCENTILE and g.memory_mb >= TRAINING_MIN_MEMORY_MB:
        return _Why(
            "training",
            [f"{pct:g}th percentile of the fleet's throughput with {gb:g} GB: training"],
        )
    if g.memory_mb >= INFERENCE_MIN_MEMORY_MB:
        why = (
            f"{pct:g}th percentile of the fleet's throughput"
            if pct < TRAINING_MIN_PERCENTILE
            else f"{gb:g} GB is below the {TRAINING_MIN_MEMORY_MB / 1000:g} GB training needs"
        )
        return _Why("inference", [f"{why}: inference"])
    need = INFERENCE_MIN_MEMORY_MB / 1000
    return _Why("secondary", [f"{gb:g} GB is below the {need:g} GB inference needs: secondary"])
