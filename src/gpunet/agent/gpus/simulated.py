"""Simulated GPUs: the same interface as NVML, from a spec such as ``2xA100-80GB,1xRTX-4090``
or a fleet YAML file. Every simulated GPU says so in every listing."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import yaml

from gpunet.agent.gpus.base import DiscoveredGpu, Telemetry
from gpunet.agent.gpus.faults import FaultProfile
from gpunet.catalog import catalog, resolve_model
from gpunet.errors import ValidationFailed

_ITEM = re.compile(r"^\s*(?:(\d+)\s*[xX]\s*)?([A-Za-z0-9][A-Za-z0-9 _.-]*?)\s*$")


def parse_simulate(spec: str) -> list[str]:
    """Models, one per GPU, from ``2xA100-80GB,1xRTX-4090`` or a YAML file path.

    The YAML form is ``gpus: [{model: A100-80GB, count: 2}, ...]``.
    """
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValidationFailed("simulate", f"cannot read fleet file {spec}: {exc}") from None
        items = (data or {}).get("gpus") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ValidationFailed("simulate", "fleet file needs a list under 'gpus'")
        out: list[str] = []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or "model" not in it:
                raise ValidationFailed(f"simulate.gpus[{i}]", "needs a 'model'")
            count = it.get("count", 1)
            if not isinstance(count, int) or count < 1:
                raise ValidationFailed(f"simulate.gpus[{i}].count", "must be a positive integer")
            out += [resolve_model(str(it["model"]), field=f"simulate.gpus[{i}].model")] * count
        return out
    out = []
    for part in spec.split(","):
        m = _ITEM.match(part)
        if not m:
            raise ValidationFailed("simulate", f"cannot read {part!r}; use e.g. 2xA100-80GB")
        count = int(m.group(1) or 1)
        if count < 1 or count > 64:
            raise ValidationFailed("simulate", f"count in {part!r} must be 1..64")
        out += [resolve_model(m.group(2), field="simulate")] * count
    if not out:
        raise ValidationFailed("simulate", "no GPUs given")
    return out


class SimulatedBackend:
    simulated = True

    def __init__(self, models: list[str], seed: str = "", faults: Path | None = None) -> None:
        self.models = models
        self.seed = seed
        self.faults = FaultProfile(faults)
        # a total-energy counter per GPU, as NVML has: integrates the simulated power
        self._energy_j = [1.0e6 * (i + 1) for i in range(len(models))]
        self._energy_t: list[float | None] = [None] * len(models)

    def discover(self) -> list[DiscoveredGpu]:
        out = []
        for i, model in enumerate(self.models):
            spec = catalog()[model]
            uid = hashlib.sha1(f"{self.seed}/{i}/{model}".encode()).hexdigest()
            cc = f"{spec.compute_capability[0]}.{spec.compute_capability[1]}"
            out.append(
                DiscoveredGpu(
                    i,
                    f"GPU-sim-{uid[:8]}-{uid[8:12]}",
                    f"Simulated {model}",
                    model,
                    spec.memory_mb,
                    cc,
                    True,
                )
            )
        return out

    def telemetry(self, busy: set[int]) -> list[Telemetry]:
        out = []
        for i, model in enumerate(self.models):
            spec = catalog()[model]
            tdp = spec.tdp_w or 300.0
            on = i in busy
            faults = self.faults.faults(i)
            temp = faults.get("temperature_c")
            power = tdp * (0.85 if on else 0.1)
            t = time.monotonic()
            last = self._energy_t[i]
            # the power since the previous reading is the power now (a step function)
            self._energy_j[i] += power * (t - last) if last is not None else 0.0
            self._energy_t[i] = t
            counter = None if faults.get("no_energy_counter") else round(self._energy_j[i], 3)
            out.append(
                Telemetry(
                    i,
                    utilization_pct=95.0 if on else 0.0,
                    memory_used_mb=spec.memory_mb * (0.6 if on else 0.0),
                    temperature_c=float(temp) if temp is not None else (72.0 if on else 35.0),
                    power_w=power,
                    energy_j=counter,
                )
            )
        return out

    def gpu_processes(self) -> dict[int, list[int]]:
        """The owner processes the fault profile puts on each GPU (attempts on simulated GPUs
        show no GPU processes)."""
        return {i: self.faults.owner_pids(i) for i in range(len(self.models))}

    def health(self, busy: set[int]) -> list[dict[str, Any]]:
        """Clean counters of a healthy simulated GPU, with the fault profile laid over them."""
        clean = {
            "ecc_uncorrected_volatile": 0,
            "ecc_corrected_volatile": 0,
            "retired_pages_pending": False,
            "row_remap_pending": False,
            "row_remap_failure": False,
            "throttle_reasons": 0x0,
            "nvlink_links_down": 0,
            "simulated": True,
        }
        out = []
        for i in range(len(self.models)):
            base = dict(clean, throttle_reasons=0x0 if i in busy else 0x1)
            out.append(self.faults.reading(i, base))
        return out

    def close(self) -> None:
        pass
