"""Fault injection for simulated GPUs: a YAML (or JSON) profile the agent re-reads, so a test
or a demo can make a GPU fail, throttle or overheat while it runs.

    gpus:
      0:
        xids: [79]                    # XID events (each reported once)
        ecc_uncorrected_volatile: 1   # any HealthReading counter
        throttle: [HwThermalSlowdown] # clocks-event reasons by name (or throttle_reasons: 0x40)
        temperature_c: 93
        slowdown_temp_c: 90
        benchmark_pct: 60             # benchmarks run at 60% of the model's reference
        soak_errors: 1                # repeated benchmark runs disagree
        no_energy_counter: true       # no total-energy counter: energy is integrated power
        owner_process: true           # the owner runs a process on it (pid 999999 unless
        owner_pids: [4242]            # owner_pids names them): see agent/owner.py
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from gpunet.core.health import HealthReading, load_rules

log = logging.getLogger("gpunet.agent")
BENCH_KEYS = {"benchmark_pct", "soak_errors", "no_energy_counter"}
OWNER_KEYS = {"owner_process", "owner_pids"}
SIM_OWNER_PID = 999_999  # the pid a simulated owner process shows with (no real process)
_COUNTERS = {f.name for f in fields(HealthReading)} - {"index", "xids"}


def throttle_mask(names: list[str]) -> int:
    by_name = {v.lower(): k for k, v in load_rules().throttle_names.items()}
    mask = 0
    for n in names:
        key = str(n).replace("_", "").lower()
        if key not in by_name:
            raise ValueError(f"unknown throttle reason {n!r}; known: {sorted(by_name)}")
        mask |= by_name[key]
    return mask


class FaultProfile:
    """Reads the profile when its file changes; remembers which XIDs it already reported."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: float | None = None
        self._data: dict[int, dict[str, Any]] = {}
        self._xids_sent: dict[int, int] = {}
        self.error: str | None = None

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            self._data, self._stamp = {}, None
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            raw = yaml.safe_load(self.path.read_text()) or {}
            gpus = raw.get("gpus") or {}
            data: dict[int, dict[str, Any]] = {}
            for idx, faults in gpus.items():
                f = dict(faults or {})
                if "throttle" in f:
                    f["throttle_reasons"] = throttle_mask(list(f.pop("throttle") or []))
                unknown = set(f) - _COUNTERS - BENCH_KEYS - OWNER_KEYS - {"xids"}
                if unknown:
                    raise ValueError(f"unknown fault keys {sorted(unknown)} for GPU {idx}")
                data[int(idx)] = f
            self._data, self.error = data, None
        except (OSError, yaml.YAMLError, ValueError, AttributeError, TypeError) as exc:
            self.error = f"cannot read fault profile {self.path}: {exc}"
            log.warning("%s (keeping the previous faults)", self.error)

    def faults(self, index: int) -> dict[str, Any]:
        self._load()
        return dict(self._data.get(index, {}))

    def new_xids(self, index: int) -> list[int]:
        """XIDs listed for ``index`` that were not reported yet."""
        listed = [int(x) for x in self.faults(index).get("xids") or []]
        sent = self._xids_sent.get(index, 0)
        self._xids_sent[index] = len(listed)
        return listed[sent:]

    def owner_pids(self, index: int) -> list[int]:
        """Pids of the simulated owner processes on GPU ``index``."""
        f = self.faults(index)
        pids = [int(p) for p in f.get("owner_pids") or []]
        if f.get("owner_process") and not pids:
            pids = [SIM_OWNER_PID]
        return pids

    def reading(self, index: int, base: dict[str, Any]) -> dict[str, Any]:
        """A health reading: the simulated GPU's clean counters, with the faults laid over."""
        f = {k: v for k, v in self.faults(index).items() if k in _COUNTERS}
        return {**base, **f, "index": index, "xids": self.new_xids(index)}
