"""The GPU model catalog: canonical short names (``A100-80GB``) and their reference specs.

Specs come from ``data/gpus/gpu_specs.csv`` (see ``data/README.md`` for its sources).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from gpunet.errors import ValidationFailed

# canonical short name -> the spec row that stands for it
_SHORT_NAMES: dict[str, str] = {
    "B200": "B200",
    "H200-141GB": "H200 SXM 141GB",
    "H100-80GB": "H100 SXM 80GB",
    "H100-PCIE-80GB": "H100 PCIe 80GB",
    "H100-NVL-94GB": "H100 NVL 94GB",
    "GH200-96GB": "GH200 96GB (HBM3)",
    "L40S": "L40S",
    "L4": "L4",
    "RTX-4090": "RTX 4090",
    "A100-80GB": "A100 SXM4 80GB",
    "A100-40GB": "A100 SXM4 40GB",
    "A100-PCIE-80GB": "A100 PCIe 80GB",
    "A100-PCIE-40GB": "A100 PCIe 40GB",
    "A10": "A10",
    "RTX-A6000": "RTX A6000",
    "RTX-3090": "RTX 3090",
    "T4": "T4",
    "V100-32GB": "V100 SXM2 32GB",
    "V100": "V100 SXM2 16GB",
    "P100": "P100 SXM2 16GB",
    "K80": "K80",
}
# other spellings users type -> canonical short name
_ALIASES: dict[str, str] = {
    "H200": "H200-141GB",
    "H100": "H100-80GB",
    "A100": "A100-80GB",
    "4090": "RTX-4090",
    "3090": "RTX-3090",
    "A6000": "RTX-A6000",
    "V100-16GB": "V100",
    "P100-16GB": "P100",
}


@dataclass(frozen=True, slots=True)
class GpuModel:
    """Reference specs of one GPU model."""

    name: str
    full_name: str
    architecture: str
    compute_capability: tuple[int, int]
    memory_mb: int
    memory_bandwidth_gbps: float
    fp32_tflops: float | None
    bf16_tflops: float | None
    fp16_tflops: float | None
    tdp_w: float | None


def _num(value: str) -> float | None:
    return float(value) if value.strip() else None


@cache
def catalog() -> dict[str, GpuModel]:
    """All known models by canonical short name."""
    text = resources.files("gpunet.data").joinpath("gpus/gpu_specs.csv").read_text()
    rows = {r["name"]: r for r in csv.DictReader(text.splitlines())}
    models: dict[str, GpuModel] = {}
    for short, full in _SHORT_NAMES.items():
        r = rows[full]
        major, minor = (int(p) for p in r["compute_capability"].split("."))
        models[short] = GpuModel(
            name=short,
            full_name=full,
            architecture=r["architecture"],
            compute_capability=(major, minor),
            memory_mb=int(float(r["memory_gb"]) * 1000),
            memory_bandwidth_gbps=float(r["memory_bandwidth_gbps"]),
            fp32_tflops=_num(r["fp32_tflops"]),
            bf16_tflops=_num(r["bf16_tflops_dense"]),
            fp16_tflops=_num(r["fp16_tflops_dense"]),
            tdp_w=_num(r["tdp_w"]),
        )
    return models


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip()).upper()


def resolve_model(name: str, *, field: str = "gpu_model") -> str:
    """The canonical short name for ``name``; raises ValidationFailed naming ``field``."""
    key = _key(name)
    known = {k.upper(): k for k in catalog()}
    if key in known:
        return known[key]
    aliases = {k.upper(): v for k, v in _ALIASES.items()}
    if key in aliases:
        return aliases[key]
    raise ValidationFailed(
        field, f"unknown GPU model {name!r}; known models: {', '.join(sorted(catalog()))}"
    )


def model_from_nvml_name(nvml_name: str, memory_mb: int) -> str | None:
    """Best canonical name for a device name as NVML reports it (e.g. 'NVIDIA H100 80GB HBM3')."""
    n = nvml_name.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace("TESLA", "")
    n = " ".join(n.split())
    candidates: list[tuple[int, str]] = []
    for short, model in catalog().items():
        family = short.split("-")[0] if not short.startswith("RTX") else short.replace("-", " ")
        if family not in n:
            continue
        # closeness of memory size decides between variants (80 GB vs 40 GB, 141 vs 94)
        candidates.append((abs(model.memory_mb - memory_mb), short))
    if not candidates:
        return None
    pcie = "PCIE" in n
    candidates.sort(key=lambda c: (c[0], ("PCIE" in c[1]) != pcie))
    return candidates[0][1]
