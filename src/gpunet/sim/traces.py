"""Job traces: Gavel's ``.trace`` and CSV forms, and gpunet's own JSON-lines format.

gpunet's format has one JSON object per line::

    {"id": "j1", "arrival_s": 0.0, "job_class": "ResNet-50 (batch size 32)",
     "gpu_count": 1, "total_steps": 74159, "account": "team-a", "priority": 0}

``total_steps`` is work in the throughput table's unit; instead of it a line may give
``duration_s``, the job's runtime on its fastest GPU type in the table.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from gpunet.errors import ValidationFailed


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace."""

    id: str
    arrival_s: float
    job_class: str
    gpu_count: int = 1
    total_steps: float | None = None
    duration_s: float | None = None  # alternative to total_steps: runtime on the fastest type
    priority: int = 0
    account: str = "default"


def _num(value: str, where: str, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValidationFailed(where, f"{name} is not a number: {value!r}") from None


def _parse_gavel_trace(lines: Iterable[str], source: str) -> list[TraceJob]:
    jobs: list[TraceJob] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        f = line.rstrip("\n").split("\t")
        where = f"{source}:{n}"
        if len(f) != 10:
            raise ValidationFailed(where, f"expected 10 tab-separated fields, got {len(f)}")
        jobs.append(
            TraceJob(
                id=str(len(jobs)),
                arrival_s=_num(f[9], where, "arrival_time"),
                job_class=f[0],
                gpu_count=int(_num(f[6], where, "scale_factor")),
                total_steps=_num(f[5], where, "total_steps"),
            )
        )
    return jobs


def _parse_csv(text: str, source: str) -> list[TraceJob]:
    rows = csv.DictReader(text.splitlines())
    need = {"arrival_time_s", "job_type", "scale_factor", "total_steps"}
    missing = need - set(rows.fieldnames or [])
    if missing:
        raise ValidationFailed(f"{source}:1", f"CSV header lacks {', '.join(sorted(missing))}")
    jobs: list[TraceJob] = []
    for n, r in enumerate(rows, start=2):
        where = f"{source}:{n}"
        jobs.append(
            TraceJob(
                id=r.get("job_id") or str(len(jobs)),
                arrival_s=_num(r["arrival_time_s"], where, "arrival_time_s"),
                job_class=r["job_type"],
                gpu_count=int(_num(r["scale_factor"], where, "scale_factor")),
                total_steps=_num(r["total_steps"], where, "total_steps"),
                priority=int(_num(r.get("priority") or "0", where, "priority")),
                account=r.get("account") or "default",
            )
        )
    return jobs


def _parse_jsonl(lines: Iterable[str], source: str) -> list[TraceJob]:
    jobs: list[TraceJob] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValidationFailed(where, f"not JSON: {e.msg}") from None
        if not isinstance(d, dict):
            raise ValidationFailed(where, "each line must be a JSON object")
        for key in ("arrival_s", "job_class"):
            if key not in d:
                raise ValidationFailed(where, f"missing field {key!r}")
        steps, dur = d.get("total_steps"), d.get("duration_s")
        if steps is None and dur is None:
            raise ValidationFailed(where, "needs total_steps or duration_s")
        jobs.append(
            TraceJob(
                id=str(d.get("id", len(jobs))),
                arrival_s=_num(d["arrival_s"], where, "arrival_s"),
                job_class=str(d["job_class"]),
                gpu_count=int(_num(d.get("gpu_count", 1), where, "gpu_count")),
                total_steps=None if steps is None else _num(steps, where, "total_steps"),
                duration_s=None if dur is None else _num(dur, where, "duration_s"),
                priority=int(_num(d.get("priority", 0), where, "priority")),
                account=str(d.get("account", "default")),
            )
        )
    return jobs


def parse_trace(text: str, source: str) -> list[TraceJob]:
    """Jobs of a trace given as text; the format is recognised from the content."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if first.lstrip().startswith("{"):
        jobs = _parse_jsonl(text.splitlines(), source)
    elif "\t" in first:
        jobs = _parse_gavel_trace(text.splitlines(), source)
    elif "," in first:
        jobs = _parse_csv(text, source)
    else:
        raise ValidationFailed(source, "not a Gavel .trace, Gavel CSV or gpunet JSON-lines trace")
    for j in jobs:
        if j.gpu_count < 1:
            raise ValidationFailed(f"{source}: job {j.id}", "gpu_count must be at least 1")
    return sorted(jobs, key=lambda j: j.arrival_s)


def read_trace(path: str | Path) -> list[TraceJob]:
    """Read a trace file (Gavel ``.trace`` or CSV, or gpunet JSON lines)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ValidationFailed("trace", f"cannot read {p}: {e.strerror}") from None
    return parse_trace(text, p.name)


def write_jsonl(jobs: Iterable[TraceJob], path: str | Path) -> None:
    """Write jobs in gpunet's JSON-lines trace format."""
    with Path(path).open("w") as f:
        for j in jobs:
            d = {k: v for k, v in asdict(j).items() if v is not None}
            f.write(json.dumps(d) + "\n")


def write_gavel_trace(jobs: Iterable[TraceJob], path: str | Path) -> None:
    """Write jobs in Gavel's tab-separated ``.trace`` format (total_steps required)."""
    with Path(path).open("w") as f:
        for j in jobs:
            if j.total_steps is None:
                raise ValidationFailed("trace", f"job {j.id} has no total_steps")
            f.write(
                f"{j.job_class}\t-\t-\t--num_steps\t0\t{int(j.total_steps)}\t{j.gpu_count}"
                f"\t1\t-1.000000\t{j.arrival_s:.6f}\n"
            )
