"""The GPU backend interface: discovery and telemetry, real (NVML) or simulated."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class DiscoveredGpu:
    index: int
    uuid: str
    name: str
    model: str | None  # canonical short name, when known
    memory_mb: int
    compute_capability: str
    simulated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Telemetry:
    index: int
    utilization_pct: float | None
    memory_used_mb: float | None
    temperature_c: float | None
    power_w: float | None
    energy_j: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GpuBackend(Protocol):
    simulated: bool

    def discover(self) -> list[DiscoveredGpu]: ...

    def telemetry(self, busy: set[int]) -> list[Telemetry]: ...

    def health(self, busy: set[int]) -> list[dict[str, Any]]:
        """Health readings per GPU (see core.health.HealthReading); keys not measured are
        left out."""
        ...

    def close(self) -> None: ...
