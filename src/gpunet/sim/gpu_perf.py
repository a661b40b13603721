"""The rates the throughput model uses for every catalog GPU, read from the package's data.

See ``gpunet.core.throughput_model`` for the model and its limits. FP32 rates are rated (nobody
measured FP32 on these GPUs; one factor for all would cancel in the ratios anyway). 16-bit tensor
rates are rated bf16 (fp16 where a GPU has no bf16, FP32 where it has neither) times the GPU's
measured matmul efficiency (median of its current bf16 measurements), or the median efficiency
of every current bf16 measurement where the GPU was not measured. A GPU without a rated FP32
figure (H100 NVL) gets its bf16 rate times the median FP32/bf16 ratio of its architecture.
"""

from __future__ import annotations

import csv
import statistics
from functools import cache
from importlib import resources

from gpunet.catalog import GpuModel, catalog
from gpunet.core.throughput_model import GpuPerf


def _efficiencies() -> dict[str, list[float]]:
    """Measured bf16 matmul efficiency (measured / rated) by the measured GPU's name."""
    text = resources.files("gpunet.data").joinpath("gpus/measured_matmul_reference.csv")
    out: dict[str, list[float]] = {}
    for r in csv.DictReader(text.read_text().splitlines()):
        if r["metric"] == "matmul_tflops" and r["dtype"] == "bf16" and r["status"] == "current":
            out.setdefault(r["gpu"], []).append(float(r["value"]) / float(r["spec_peak"]))
    return out


def _measured_for(full_name: str, eff: dict[str, list[float]]) -> list[float]:
    # "A100 SXM4" was measured without a memory size: it stands for both SXM4 variants
    return [e for name, es in eff.items() for e in es if full_name.split(" (")[0] == name] or [
        e for name, es in eff.items() for e in es if full_name.startswith(name + " ")
    ]


def _fp32(m: GpuModel, models: dict[str, GpuModel]) -> float:
    if m.fp32_tflops:
        return m.fp32_tflops
    ratios = [
        o.fp32_tflops / o.bf16_tflops
        for o in models.values()
        if o.architecture == m.architecture and o.fp32_tflops and o.bf16_tflops
    ]
    if not m.bf16_tflops or not ratios:
        raise ValueError(f"no FP32 rate for {m.name} and none to derive it from")
    return m.bf16_tflops * statistics.median(ratios)


@cache
def gpu_perf() -> dict[str, GpuPerf]:
    """``{catalog short name: GpuPerf}`` for every catalog GPU."""
    models = catalog()
    eff = _efficiencies()
    median_eff = statistics.median(e for es in eff.values() for e in es)
    out: dict[str, GpuPerf] = {}
    for name, m in models.items():
        fp32 = _fp32(m, models)
        rated16 = m.bf16_tflops or m.fp16_tflops or fp32
        mine = _measured_for(m.full_name, eff)
        e = statistics.median(mine) if mine else median_eff
        out[name] = GpuPerf(name, fp32, rated16 * e, m.memory_bandwidth_gbps, bool(mine))
    return out
