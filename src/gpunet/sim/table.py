"""The throughput table a simulation uses: measured entries, plus modelled ones for the fleet."""

from __future__ import annotations

from collections.abc import Iterable

from gpunet.core.throughput_model import Completed, complete_table
from gpunet.sim.fleet import Fleet, class_key
from gpunet.sim.gpu_perf import gpu_perf
from gpunet.sim.traces import TraceJob


def trace_classes(trace: Iterable[TraceJob]) -> list[str]:
    """The table keys a trace's jobs need, in order of first use."""
    return list(dict.fromkeys(class_key(t.job_class, t.gpu_count) for t in trace))


def table_for(
    table: dict[str, dict[str, float]], fleet: Fleet, classes: Iterable[str] | None = None
) -> Completed:
    """``table`` completed with modelled throughputs on ``fleet``'s models for ``classes`` (all
    of the table's classes when None); see ``gpunet.core.throughput_model``."""
    return complete_table(table, table if classes is None else classes, fleet.models, gpu_perf())
