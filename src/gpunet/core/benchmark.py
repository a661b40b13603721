"""Benchmarks: the reference each result is scored against, simulated results derived from
the spec table, scores (% of reference), fleet percentiles and drift. All pure.

References per model and metric: the measured large-GEMM bf16 TFLOPS (MAMF) from
``data/gpus/measured_matmul_reference.csv`` where the model has one, else the datasheet peak
from ``gpu_specs.csv``. Each scored metric names which reference it used.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from gpunet.catalog import catalog

METRICS = ("bf16_tflops", "fp16_tflops", "fp32_tflops", "memory_bandwidth_gbps", "h2d_gbps")
HEADLINE = ("bf16_tflops", "fp16_tflops", "fp32_tflops")
# a GPU below this share of its reference is flagged (a chosen default: measured MAMF spreads
# by a few percent between runs and software versions, a GPU at 85% is clearly off)
BELOW_REFERENCE_PCT = 85.0


@dataclass(frozen=True, slots=True)
class Reference:
    value: float
    source: str


@cache
def _measured() -> dict[tuple[str, str], float]:
    text = resources.files("gpunet.data").joinpath("gpus/measured_matmul_reference.csv")
    out: dict[tuple[str, str], float] = {}
    for r in csv.DictReader(text.read_text().splitlines()):
        if r["status"] != "current":
            continue
        key = {
            ("matmul_tflops", "bf16"): "bf16_tflops",
            ("host_to_device_copy_bandwidth", ""): "h2d_gbps",
        }.get((r["metric"], r["dtype"]))
        if key and (r["gpu"], key) not in out:
            out[(r["gpu"], key)] = float(r["value"])
    return out


def reference(model: str, metric: str) -> Reference | None:
    """What a healthy GPU of ``model`` achieves on ``metric``; None: no reference known."""
    spec = catalog().get(model)
    if spec is None:
        return None
    for (gpu, key), value in _measured().items():
        if key == metric and spec.full_name.startswith(gpu):
            return Reference(value, f"measured ({gpu}, measured_matmul_reference.csv)")
    peak = {
        "bf16_tflops": spec.bf16_tflops,
        "fp16_tflops": spec.fp16_tflops,
        "fp32_tflops": spec.fp32_tflops,
        "memory_bandwidth_gbps": spec.memory_bandwidth_gbps,
    }.get(metric)
    return Reference(peak, f"datasheet peak ({spec.full_name})") if peak else None


@dataclass(frozen=True, slots=True)
class BenchmarkResult:
    """One benchmark run on one GPU, as the agent reports it."""

    index: int
    values: dict[str, float]  # metric -> measured value
    unmeasured: dict[str, str] = field(default_factory=dict)  # metric -> why not
    soak_runs: int = 0
    soak_errors: int = 0  # repeated results that disagreed, or runs that errored
    simulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "values": dict(self.values),
            "unmeasured": dict(self.unmeasured),
            "soak_runs": self.soak_runs,
            "soak_errors": self.soak_errors,
            "simulated": self.simulated,
        }


def simulated_result(index: int, model: str, factor: float = 1.0) -> BenchmarkResult:
    """A simulated GPU's result: each reference times ``factor`` (1.0: a healthy GPU;
    0.6: a GPU injected to run at 60%), marked simulated."""
    values, unmeasured = {}, {}
    for m in METRICS:
        ref = reference(model, m)
        if ref is None:
            unmeasured[m] = f"no reference for {model} to simulate from"
        else:
            values[m] = round(ref.value * factor, 3)
    return BenchmarkResult(index, values, unmeasured, soak_runs=3, simulated=True)


@dataclass(frozen=True, slots=True)
class Score:
    score_pct: float | None  # the headline matmul rate as % of its reference
    per_metric: dict[str, dict[str, Any]]  # metric -> value, reference, source, pct
    flagged: bool
    reasons: tuple[str, ...]
    soak_failed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "score_pct": self.score_pct,
            "per_metric": self.per_metric,
            "flagged": self.flagged,
            "reasons": list(self.reasons),
            "soak_failed": self.soak_failed,
        }


def score(model: str, r: BenchmarkResult) -> Score:
    per: dict[str, dict[str, Any]] = {}
    for m, v in r.values.items():
        ref = reference(model, m)
        if ref is None or ref.value <= 0:
            continue
        per[m] = {
            "value": v,
            "reference": ref.value,
            "source": ref.source,
            "pct": round(100.0 * v / ref.value, 1),
        }
    # the headline is the matmul rate (bf16, else fp16, else fp32); the rest are shown
    head = next((m for m in HEADLINE if m in per), None)
    pct = per[head]["pct"] if head else None
    reasons = []
    flagged = False
    if pct is not None and pct < BELOW_REFERENCE_PCT:
        flagged = True
        assert head is not None
        reasons.append(
            f"benchmarks at {pct:g}% of the {model} reference (below {BELOW_REFERENCE_PCT:g}%): "
            f"{head} {per[head]['value']:g} vs {per[head]['reference']:g}"
        )
    soak_failed = r.soak_errors > 0
    if soak_failed:
        flagged = True
        reasons.append(f"soak: {r.soak_errors} of {r.soak_runs} repeated runs disagreed or failed")
    return Score(pct, per, flagged, tuple(reasons), soak_failed)


def throughput(model: str, score_pct: float | None) -> float:
    """Achieved dense TFLOPS: the model's headline reference scaled by the score."""
    ref = (
        reference(model, "bf16_tflops")
        or reference(model, "fp16_tflops")
        or reference(model, "fp32_tflops")
    )
    base = ref.value if ref else 0.0
    return base * (score_pct if score_pct is not None else 100.0) / 100.0


def percentiles(values: dict[str, float]) -> dict[str, float]:
    """Percentile rank within the fleet: the share of GPUs at or below each one, in %."""
    xs = sorted(values.values())
    n = len(xs)
    out = {}
    for k, v in values.items():
        at_or_below = sum(1 for x in xs if x <= v)
        out[k] = round(100.0 * at_or_below / n, 1)
    return out


def drift(scores: list[float]) -> float | None:
    """Change of the score from the first run to the latest, in percentage points."""
    return round(scores[-1] - scores[0], 1) if len(scores) >= 2 else None
