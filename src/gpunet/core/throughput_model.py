"""Modelled training throughput of a job class on GPU models nobody measured it on.

Gavel's measured table (``data/gavel/throughputs.csv``) covers K80, P100 and V100 only. For any
other model the simulator derives a class's throughput from its measured throughput on a
reference model (the measured model with the highest FP32 rate: V100 for Gavel's table) by a
roofline-style mix of two spec ratios::

    speedup = 1 / (s / (C_target / C_ref) + (1 - s) / (B_target / B_ref))

where ``C`` is the GPU's effective dense compute rate in the precision the class uses, ``B`` its
memory bandwidth, and ``s = COMPUTE_SHARE`` the share of a step's time spent compute-bound at the
reference (the rest memory-bound). The mix is a weighted harmonic mean, so the modelled speedup
lies between the two ratios: it is capped by the larger one, never exceeds it, and rises when
either rate of the target rises.

Sources: rated dense rates and bandwidth from ``data/gpus/gpu_specs.csv``; 16-bit tensor rates are
scaled by measured matmul efficiency (``data/gpus/measured_matmul_reference.csv``: the measured
best-shape bf16 matmul over the rated peak) where a GPU was measured, else by the median of the
measured efficiencies.

Precision: Gavel's classes were measured in FP32 (PyTorch without mixed precision), so they scale
by FP32 rates. Classes exported from a live network (``seconds on MODEL``: work counted in seconds
of running time on MODEL) are assumed to train in bf16 mixed precision on tensor cores.

What it ignores: NVLink and PCIe (multi-GPU classes scale like their single-GPU rate ratio), the
batch sizes a GPU's memory allows (a class Gavel could not run on a small GPU may be modelled on
another small one), whether a framework actually uses tensor cores (TF32 included), data loading,
CPU and kernel-launch overheads (small 2019-era models rarely fill a modern GPU, so speedups on
the newest GPUs are optimistic), clocks under power or thermal limits. ``COMPUTE_SHARE`` is an
assumption, not a fit: Gavel's own ratios are too irregular to fit a share per class
(Recommendation runs faster on P100 than on V100).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

COMPUTE_SHARE = 0.5  # no per-class profile: compute and memory weigh the same
REFERENCE_PREFIX = "seconds on "  # class of an exported job: work in seconds on that model


class Precision(StrEnum):
    FP32 = "fp32"  # CUDA cores, no tensor cores
    TENSOR16 = "bf16"  # 16-bit tensor cores (fp16 where a GPU has no bf16)


@dataclass(frozen=True, slots=True)
class GpuPerf:
    """The rates of one GPU model the model uses (effective: rated x measured efficiency)."""

    model: str
    fp32_tflops: float
    tensor16_tflops: float
    bandwidth_gbps: float
    tensor16_measured: bool = False  # tensor16 from a measured matmul, not rated x median

    def compute(self, precision: Precision) -> float:
        return self.fp32_tflops if precision is Precision.FP32 else self.tensor16_tflops


def speedup(
    ref: GpuPerf, target: GpuPerf, precision: Precision, compute_share: float = COMPUTE_SHARE
) -> float:
    """How many times faster a class runs on ``target`` than on ``ref``."""
    if not 0.0 <= compute_share <= 1.0:
        raise ValueError("compute_share must be within [0, 1]")
    c = target.compute(precision) / ref.compute(precision)
    b = target.bandwidth_gbps / ref.bandwidth_gbps
    return 1.0 / (compute_share / c + (1.0 - compute_share) / b)


def reference_class(model: str) -> str:
    """The class of a job measured only by its running time on ``model``."""
    return f"{REFERENCE_PREFIX}{model}"


def _base(cls: str) -> str:
    """A class key without its ``xN`` GPU-count suffix."""
    head, sep, n = cls.rpartition(" x")
    return head if sep and n.isdigit() else cls


def reference_model(cls: str) -> str | None:
    """The model a ``seconds on MODEL`` class (any GPU count) is counted on, else None."""
    base = _base(cls)
    return base[len(REFERENCE_PREFIX) :] if base.startswith(REFERENCE_PREFIX) else None


@dataclass(frozen=True, slots=True)
class Completed:
    """A throughput table with modelled entries added, and which entries those are."""

    table: dict[str, dict[str, float]]
    modelled: tuple[tuple[str, str], ...]  # (class, model)


def complete_table(
    table: Mapping[str, Mapping[str, float]],
    classes: Iterable[str],
    models: Iterable[str],
    perf: Mapping[str, GpuPerf],
) -> Completed:
    """``table`` with a modelled throughput for each of ``classes`` on each of ``models`` it lacks.

    Measured beats modelled: an entry in ``table`` is never changed, and a model the table
    measures for any class is never modelled for a class the table holds (a missing entry there
    means the class did not run on it, e.g. out of memory). A class the table lacks is modelled
    only if it is a ``seconds on MODEL`` class (1 unit of work per second on MODEL).
    """
    measured_models = {m for row in table.values() for m in row}
    out = {k: dict(v) for k, v in table.items()}
    modelled: list[tuple[str, str]] = []
    wanted = [m for m in dict.fromkeys(models) if m in perf]
    for cls in dict.fromkeys(classes):
        row = table.get(cls)
        if row:
            refs = [m for m, v in row.items() if v > 0 and m in perf]
            if not refs:
                continue
            ref = max(refs, key=lambda m: (perf[m].fp32_tflops, m))
            base, precision = row[ref], Precision.FP32
            targets = [m for m in wanted if m not in row and m not in measured_models]
        else:
            ref_model = reference_model(cls)
            if ref_model is None or ref_model not in perf:
                continue
            ref, base, precision = ref_model, 1.0, Precision.TENSOR16
            out[cls] = {ref: base}
            targets = [m for m in wanted if m != ref]
        for m in targets:
            out[cls][m] = base * speedup(perf[ref], perf[m], precision)
            modelled.append((cls, m))
    return Completed(out, tuple(modelled))
