"""The GPU backend interface: discovery and telemetry, real (NVML) or simulated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gpunet.wire.agent import GpuInfo, GpuTelemetry


@dataclass(frozen=True, slots=True)
class DiscoveredGpu:
    index: int
    uuid: str
    name: str
    model: str | None  # canonical short name, when known
    memory_mb: int
    compute_capability: str
    simulated: bool

    def to_wire(self) -> GpuInfo:
        """As the agent registers it."""
        return GpuInfo(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            model=self.model,
            memory_mb=self.memory_mb,
            compute_capability=self.compute_capability,
            simulated=self.simulated,
        )


@dataclass(frozen=True, slots=True)
class Telemetry:
    index: int
    utilization_pct: float | None
    memory_used_mb: float | None
    temperature_c: float | None
    power_w: float | None
    energy_j: float | None = None

    def to_wire(self) -> GpuTelemetry:
        """As the agent's heartbeat carries it."""
        return GpuTelemetry(
            index=self.index,
            utilization_pct=self.utilization_pct,
            memory_used_mb=self.memory_used_mb,
            temperature_c=self.temperature_c,
            power_w=self.power_w,
            energy_j=self.energy_j,
        )


class GpuBackend(Protocol):
    simulated: bool

    def discover(self) -> list[DiscoveredGpu]: ...

    def telemetry(self, busy: set[int]) -> list[Telemetry]: ...

    def health(self, busy: set[int]) -> list[dict[str, Any]]:
        """Health readings per GPU (see core.health.HealthReading); keys not measured are
        left out."""
        ...

    def gpu_processes(self) -> dict[int, list[int]]:
        """GPU index -> pids of the processes using it (compute and graphics)."""
        ...

    def close(self) -> None: ...
