"""A live network's history as a trace: ``gpunet sim export`` writes it, ``sim run`` replays it.

Each exported job becomes one trace job: its arrival is its submission time after the first
exported job's, its GPU count is its own, and its work is its measured running time on the GPU
model it ran on. Its class is its spec's ``job_class`` when the throughput table has (or models)
a throughput for that class on that model: work = running time x that throughput, so the class
scales across models as the table says. Otherwise (no ``job_class``, or one the table does not
know) its class is ``seconds on MODEL``: work counted in seconds of running time on MODEL, scaled
to other models by ``gpunet.core.throughput_model`` (assumed bf16 mixed precision).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpunet.catalog import resolve_model
from gpunet.core.throughput_model import complete_table, reference_class
from gpunet.errors import ValidationFailed
from gpunet.sim.fleet import class_key
from gpunet.sim.gpu_perf import gpu_perf
from gpunet.sim.traces import TraceJob
from gpunet.wire import resources as R

CSV_COLUMNS = (
    "job_id",
    "arrival_time_s",
    "job_type",
    "scale_factor",
    "total_steps",
    "priority",
    "account",
    "gpu_model",
    "running_s",
    "jct_s",
)


@dataclass(frozen=True, slots=True)
class ExportedJob:
    trace: TraceJob
    gpu_model: str
    running_s: float
    jct_s: float


@dataclass(frozen=True, slots=True)
class Exported:
    jobs: list[ExportedJob]
    fleet: str  # a --fleet spec, e.g. "2xA100-80GB,1xRTX-4090"
    skipped: list[str]  # why each job or GPU model left out was left out


def _model(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return resolve_model(name)
    except ValidationFailed:
        return None


def from_export(data: R.SimExport, table: dict[str, dict[str, float]]) -> Exported:
    """The trace and fleet spec of an export; ``table`` decides which job classes are kept."""
    skipped: list[str] = []
    fleet = []
    for f in data.fleet:
        model = _model(f.model)
        if model is None:
            skipped.append(f"{f.count} GPU(s) of model {f.model!r}: not in the GPU catalog")
        else:
            fleet.append(f"{f.count}x{model}")
    perf = gpu_perf()
    jobs = []
    for j in data.jobs:
        model = _model(j.gpu_model)
        if model is None:
            skipped.append(f"job {j.id}: ran on {j.gpu_model!r}, not in the GPU catalog")
            continue
        if j.running_s <= 0:
            skipped.append(f"job {j.id}: no running time")
            continue
        cls, steps = reference_class(model), j.running_s
        if j.job_class:
            key = class_key(j.job_class, j.gpu_count)
            rate = complete_table(table, [key], [model], perf).table.get(key, {}).get(model, 0.0)
            if rate > 0:
                cls, steps = j.job_class, j.running_s * rate
        trace = TraceJob(
            id=j.id,
            arrival_s=j.arrival_s,
            job_class=cls,
            gpu_count=j.gpu_count,
            total_steps=steps,
            priority=j.priority,
            account=j.account_id,
        )
        jobs.append(ExportedJob(trace, model, j.running_s, j.jct_s))
    return Exported(jobs, ",".join(fleet), skipped)


def write_csv(jobs: Iterable[ExportedJob], path: str | Path) -> None:
    """The trace as CSV ``sim run --trace`` reads, with what each job did on the network."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for e in jobs:
            t = e.trace
            w.writerow(
                [
                    t.id,
                    f"{t.arrival_s:.3f}",
                    t.job_class,
                    t.gpu_count,
                    repr(t.total_steps),
                    t.priority,
                    t.account,
                    e.gpu_model,
                    f"{e.running_s:.3f}",
                    f"{e.jct_s:.3f}",
                ]
            )
