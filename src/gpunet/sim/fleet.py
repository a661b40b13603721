"""Fleets and throughput tables for the simulator."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gpunet.catalog import catalog, resolve_model
from gpunet.core.scheduling import GpuView, NodeView
from gpunet.errors import ValidationFailed

# Gavel's worker types name GPU models in lower case
_GAVEL_TYPES = {"v100": "V100", "p100": "P100", "k80": "K80"}


@dataclass(frozen=True, slots=True)
class Fleet:
    nodes: tuple[NodeView, ...]
    gpus: tuple[GpuView, ...]

    @property
    def models(self) -> list[str]:
        return sorted({g.model for g in self.gpus})


def _model(name: str, field: str) -> str:
    return _GAVEL_TYPES.get(name.strip().lower()) or resolve_model(name, field=field)


def parse_fleet(spec: str, gpus_per_node: int = 8) -> Fleet:
    """A fleet from ``12xV100,12xP100,12xK80``; each model's GPUs fill nodes of
    ``gpus_per_node``."""
    if gpus_per_node < 1:
        raise ValidationFailed("gpus_per_node", "must be at least 1")
    nodes: list[NodeView] = []
    gpus: list[GpuView] = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValidationFailed("fleet", "empty fleet spec; expected e.g. 12xV100,12xP100")
    n_nodes: dict[str, int] = {}
    for part in parts:
        count_s, sep, name = part.partition("x")
        if not sep or not count_s.strip().isdigit() or int(count_s) < 1:
            raise ValidationFailed("fleet", f"{part!r} is not COUNTxMODEL, e.g. 12xV100")
        model = _model(name, "fleet")
        spec_row = catalog()[model]
        for i in range(int(count_s)):
            if i % gpus_per_node == 0:
                n_nodes[model] = n_nodes.get(model, 0) + 1
                nodes.append(NodeView(f"{model}-{n_nodes[model]}"))
            node = nodes[-1].id
            gpus.append(
                GpuView(
                    id=f"{node}/{i % gpus_per_node}",
                    node_id=node,
                    model=model,
                    memory_mb=spec_row.memory_mb,
                    compute_capability=spec_row.compute_capability,
                    simulated=True,
                )
            )
    return Fleet(tuple(nodes), tuple(gpus))


def class_key(job_type: str, gpu_count: int) -> str:
    """The throughput-table key of a job type run on ``gpu_count`` GPUs."""
    return job_type if gpu_count == 1 else f"{job_type} x{gpu_count}"


def load_throughputs(path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """``{class_key: {model: steps per second}}`` from a CSV with columns
    ``job_type, scale_factor, worker_type, steps_per_second`` (Gavel's measurements when
    ``path`` is None). Rows for GPUs spread over servers (``*_unconsolidated``) are skipped:
    the scheduler always places a job's GPUs on one node."""
    if path is None:
        text = resources.files("gpunet.data.gavel").joinpath("throughputs.csv").read_text()
        source = "throughputs.csv"
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValidationFailed("throughputs", f"cannot read {path}: {e.strerror}") from None
        source = Path(path).name
    table: dict[str, dict[str, float]] = {}
    reader = csv.DictReader(text.splitlines())
    need = {"job_type", "scale_factor", "worker_type", "steps_per_second"}
    if not need <= set(reader.fieldnames or []):
        raise ValidationFailed(f"{source}:1", f"header must name {', '.join(sorted(need))}")
    for n, r in enumerate(reader, start=2):
        if "unconsolidated" in r["worker_type"]:
            continue
        where = f"{source}:{n}"
        try:
            scale = int(r["scale_factor"])
            value = float(r["steps_per_second"])
        except ValueError:
            raise ValidationFailed(where, "scale_factor/steps_per_second must be numbers") from None
        model = _model(r["worker_type"], where)
        table.setdefault(class_key(r["job_type"], scale), {})[model] = value
    return table
