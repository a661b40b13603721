"""Energy meters of the attempts an agent runs: one meter per GPU, sampled at start, with each
heartbeat's telemetry, and at the end; the totals go with the attempt's finished report."""

from __future__ import annotations

import time

from gpunet.agent.gpus.base import GpuBackend, Telemetry
from gpunet.core.energy import Meter, Sample, step
from gpunet.wire.agent import EnergyUse


def sample(meters: dict[int, Meter], telemetry: list[Telemetry], at: float | None = None) -> None:
    """Add the GPUs' current readings to the meters of one attempt (in place)."""
    t = time.monotonic() if at is None else at
    for tel in telemetry:
        if tel.index in meters:
            meters[tel.index] = step(meters[tel.index], Sample(t, tel.energy_j, tel.power_w))


def start(backend: GpuBackend, indices: list[int], busy: set[int]) -> dict[int, Meter]:
    meters = {i: Meter() for i in indices}
    sample(meters, backend.telemetry(busy))
    return meters


def report(meters: dict[int, Meter]) -> list[EnergyUse]:
    """The meters as the attempt's finished report carries them."""
    return [
        EnergyUse(
            index=i,
            joules=round(m.joules, 3),
            method=m.method,
            resets=m.resets,
            samples=m.samples,
            seconds=round(m.seconds, 3),
            counter_start_j=m.first.counter_j if m.first else None,
            counter_end_j=m.last.counter_j if m.last else None,
        )
        for i, m in sorted(meters.items())
    ]
