"""Real GPUs through NVML (nvidia-ml-py)."""

from __future__ import annotations

import contextlib
from typing import Any

from gpunet.agent import owner
from gpunet.agent.gpus import nvml_health
from gpunet.agent.gpus.base import DiscoveredGpu, Telemetry
from gpunet.catalog import model_from_nvml_name


class NvmlUnavailable(RuntimeError):
    """No NVIDIA driver, or no GPU."""


class NvmlBackend:
    simulated = False

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise NvmlUnavailable("nvidia-ml-py is not installed") from exc
        self._nv: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not start: {exc}") from exc
        if pynvml.nvmlDeviceGetCount() == 0:
            pynvml.nvmlShutdown()
            raise NvmlUnavailable("NVML found no GPU")
        self._xids = nvml_health.XidWatch(pynvml, self._handles())

    def _handles(self) -> list[Any]:
        nv = self._nv
        return [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]

    def discover(self) -> list[DiscoveredGpu]:
        nv = self._nv
        out = []
        for i, h in enumerate(self._handles()):
            name = nv.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            uuid = nv.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            mem_mb = int(nv.nvmlDeviceGetMemoryInfo(h).total / 1_000_000)
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
            out.append(
                DiscoveredGpu(
                    i,
                    uuid,
                    name,
                    model_from_nvml_name(name, mem_mb),
                    mem_mb,
                    f"{major}.{minor}",
                    False,
                )
            )
        return out

    def telemetry(self, busy: set[int]) -> list[Telemetry]:
        nv = self._nv
        out = []
        for i, h in enumerate(self._handles()):

            def read(fn: Any, *args: Any, h: Any = h) -> Any:
                with contextlib.suppress(nv.NVMLError):
                    return fn(h, *args)
                return None

            util = read(nv.nvmlDeviceGetUtilizationRates)
            mem = read(nv.nvmlDeviceGetMemoryInfo)
            temp = read(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
            power = read(nv.nvmlDeviceGetPowerUsage)
            energy = read(nv.nvmlDeviceGetTotalEnergyConsumption)
            out.append(
                Telemetry(
                    i,
                    float(util.gpu) if util is not None else None,
                    mem.used / 1_000_000 if mem is not None else None,
                    float(temp) if temp is not None else None,
                    power / 1000 if power is not None else None,
                    energy / 1000 if energy is not None else None,
                )
            )
        return out

    def gpu_processes(self) -> dict[int, list[int]]:
        """Pids of the compute and graphics processes on each GPU."""
        return {i: owner.nvml_processes(self._nv, h) for i, h in enumerate(self._handles())}

    def health(self, busy: set[int]) -> list[dict[str, Any]]:
        xids = self._xids.drain()
        return [
            nvml_health.read(self._nv, i, h, xids.get(i, [])) for i, h in enumerate(self._handles())
        ]

    def close(self) -> None:
        self._xids.close()
        with contextlib.suppress(Exception):
            self._nv.nvmlShutdown()
