"""``gpunet sim``: replay traces with the scheduler, compare policies, generate traces."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gpunet.cli import formats
from gpunet.errors import GpunetError, ValidationFailed
from gpunet.sdk.client import Client
from gpunet.sim import (
    SimConfig,
    load_throughputs,
    metrics,
    parse_fleet,
    plot,
    read_trace,
    simulate,
)
from gpunet.sim.export import from_export, write_csv
from gpunet.sim.generate import generate as generate_trace
from gpunet.sim.table import table_for, trace_classes
from gpunet.sim.traces import write_gavel_trace, write_jsonl

app = typer.Typer(help="Simulate the scheduler on job traces (Gavel or gpunet format).")
# a wide table even when piped (Rich falls back to 80 columns without a terminal)
out = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True)
T = TypeVar("T")

FleetOpt = Annotated[
    str, typer.Option("--fleet", help="GPUs, e.g. 12xV100,12xP100,12xK80 (v100/p100/k80 too)")
]
ThroughputsOpt = Annotated[
    Path | None,
    typer.Option(
        "--throughputs",
        help="CSV job_type,scale_factor,worker_type,steps_per_second"
        " (default: Gavel's measurements; other GPUs modelled, see `gpunet sim throughputs`)",
    ),
]
RoundOpt = Annotated[float, typer.Option("--round", help="round length in seconds")]
CostOpt = Annotated[
    float, typer.Option("--preemption-cost", help="seconds of progress lost per restart")
]
WindowOpt = Annotated[
    str | None, typer.Option("--window", help="measure jobs FIRST:LAST (0-based, inclusive)")
]
PerNodeOpt = Annotated[
    int,
    typer.Option(
        "--gpus-per-node",
        help="GPUs per simulated node; a job larger than a node runs as a gang of nodes"
        " (4 for Gavel's servers: an 8-GPU job is 2 nodes x 4)",
    ),
]


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; print gpunet errors as one line and exit 2, without a traceback."""
    try:
        return fn()
    except GpunetError as e:
        err.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None


def _window(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    lo, sep, hi = text.partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ValidationFailed("window", f"{text!r} is not FIRST:LAST, e.g. 100:399")
    return int(lo), int(hi)


def _run_one(
    trace: Path,
    fleet: str,
    policy: str,
    throughputs: Path | None,
    round_s: float,
    cost: float,
    window: str | None,
    per_node: int,
    seed: int,
    show_progress: bool,
) -> tuple[dict[str, float | int | str], object]:
    jobs = read_trace(trace)
    cfg = SimConfig(
        policy=policy, round_s=round_s, preemption_cost_s=cost, window=_window(window), seed=seed
    )
    fl = parse_fleet(fleet, per_node)
    done = table_for(load_throughputs(throughputs), fl, trace_classes(jobs))
    table = done.table
    if done.modelled:
        err.print(
            f"{len(done.modelled)} throughputs modelled from GPU specs (the rest measured); "
            "see gpunet sim throughputs"
        )
    if not show_progress:
        result = simulate(jobs, fl, table, cfg)
    else:
        with Progress(
            TextColumn(f"{trace.name} [bold]{policy}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task("jobs", total=None)

            def tick(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = simulate(jobs, fl, table, cfg, progress=tick)
    m = metrics(result)
    m["trace"] = trace.name
    return m, result


def _fmt_h(seconds: object) -> str:
    if not isinstance(seconds, float) or math.isnan(seconds):
        return "-"
    return formats.significant(seconds / 3600)


def _table(rows: list[dict[str, float | int | str]]) -> Table:
    t = Table(title="simulation")
    for col in (
        "trace",
        "policy",
        "avg JCT h",
        "median h",
        "p99 h",
        "floor h",
        "makespan h",
        "util",
        "preempt",
        "decision ms",
    ):
        t.add_column(col, justify="left" if col in ("trace", "policy") else "right")
    for m in rows:
        t.add_row(
            str(m["trace"]),
            str(m["policy"]),
            _fmt_h(m["avg_jct_s"]),
            _fmt_h(m["median_jct_s"]),
            _fmt_h(m["p99_jct_s"]),
            _fmt_h(m["floor_avg_jct_s"]),
            _fmt_h(m["makespan_s"]),
            formats.fraction(m["utilization"]),
            str(m["preemptions"]),
            formats.significant(float(m["decision_time_s"]) * 1000),
        )
    return t


@app.command()
def run(
    trace: Annotated[Path, typer.Option("--trace", help="trace file (.trace, .csv or .jsonl)")],
    fleet: FleetOpt,
    policy: Annotated[
        str,
        typer.Option("--policy", help="default, las, fifo, priority, fifo_perf or gavel-compat"),
    ] = "default",
    throughputs: ThroughputsOpt = None,
    round_s: RoundOpt = 360.0,
    preemption_cost: CostOpt = 0.0,
    window: WindowOpt = None,
    gpus_per_node: PerNodeOpt = 8,
    seed: Annotated[int, typer.Option("--seed", help="tie-break seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="write a PNG plot")] = None,
) -> None:
    """Replay one trace on a simulated fleet and report JCT, makespan and utilization."""
    m, result = _guard(
        lambda: _run_one(
            trace,
            fleet,
            policy,
            throughputs,
            round_s,
            preemption_cost,
            window,
            gpus_per_node,
            seed,
            sys.stderr.isatty(),
        )
    )
    if plot_path is not None:
        plot(result, plot_path)  # type: ignore[arg-type]
    if as_json:
        out.print_json(json.dumps(m))
    else:
        out.print(_table([m]))


@app.command()
def compare(
    trace: Annotated[list[Path], typer.Option("--trace", help="trace file; repeat for more")],
    fleet: FleetOpt,
    policies: Annotated[str, typer.Option("--policies", help="comma-separated policies")] = (
        "default,las,fifo,gavel-compat"
    ),
    throughputs: ThroughputsOpt = None,
    round_s: RoundOpt = 360.0,
    preemption_cost: CostOpt = 0.0,
    window: WindowOpt = None,
    gpus_per_node: PerNodeOpt = 8,
    seed: Annotated[int, typer.Option("--seed", help="tie-break seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
) -> None:
    """Run several policies on the same traces and print one table."""
    rows = []
    for path in trace:
        for pol in [p.strip() for p in policies.split(",") if p.strip()]:

            def one(
                path: Path = path, pol: str = pol
            ) -> tuple[dict[str, float | int | str], object]:
                return _run_one(
                    path,
                    fleet,
                    pol,
                    throughputs,
                    round_s,
                    preemption_cost,
                    window,
                    gpus_per_node,
                    seed,
                    sys.stderr.isatty(),
                )

            m, _ = _guard(one)
            rows.append(m)
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        out.print(_table(rows))


@app.command()
def generate(
    output: Annotated[Path, typer.Option("--out", help="file to write")],
    kind: Annotated[str, typer.Option("--kind", help="gavel or philly")] = "gavel",
    jobs: Annotated[int, typer.Option("--jobs", help="number of jobs")] = 1000,
    rate: Annotated[float, typer.Option("--rate", help="arrivals per hour")] = 2.0,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
    multi_gpu: Annotated[
        bool,
        typer.Option(
            "--multi-gpu",
            help="gavel: Gavel's multi-GPU mix, scale factors 1/2/4/8 (70/10/15/5 percent)",
        ),
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (gpunet) or trace (Gavel)")] = (
        "jsonl"
    ),
    throughputs: ThroughputsOpt = None,
) -> None:
    """Write a synthetic trace (Gavel-style or from the Philly job distribution)."""

    def go() -> int:
        if fmt not in ("jsonl", "trace"):
            raise ValidationFailed("format", f"unknown format {fmt!r}; use jsonl or trace")
        made = generate_trace(
            kind, jobs, rate, load_throughputs(throughputs), seed=seed, multi_gpu=multi_gpu
        )
        (write_jsonl if fmt == "jsonl" else write_gavel_trace)(made, output)
        return len(made)

    n = _guard(go)
    err.print(f"wrote {n} jobs to {output}")


@app.command()
def throughputs(
    fleet: FleetOpt,
    throughputs: ThroughputsOpt = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="only the classes this trace uses")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print rows as JSON")] = False,
) -> None:
    """The throughput table a run on FLEET uses: measured or modelled, class by class."""

    def go() -> list[dict[str, str | float]]:
        fl = parse_fleet(fleet)
        classes = trace_classes(read_trace(trace)) if trace is not None else None
        done = table_for(load_throughputs(throughputs), fl, classes)
        modelled = set(done.modelled)
        keys = classes if classes is not None else sorted(done.table)
        return [
            {
                "class": cls,
                "model": m,
                "steps_per_second": done.table[cls][m],
                "source": "modelled" if (cls, m) in modelled else "measured",
            }
            for cls in keys
            for m in fl.models
            if done.table.get(cls, {}).get(m, 0) > 0
        ]

    rows = _guard(go)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table(title=f"throughputs on {fleet}")
    for col in ("class", "model", "steps/s", "source"):
        t.add_column(col, justify="right" if col == "steps/s" else "left")
    for r in rows:
        t.add_row(
            str(r["class"]),
            str(r["model"]),
            formats.significant(r["steps_per_second"], 4),
            str(r["source"]),
        )
    out.print(t)


@app.command()
def export(
    output: Annotated[
        Path, typer.Option("--out", help="trace to write (.csv, or .jsonl for gpunet's format)")
    ] = Path("trace.csv"),
    fleet_out: Annotated[
        Path | None, typer.Option("--fleet-out", help="also write the fleet spec to this file")
    ] = None,
    throughputs: ThroughputsOpt = None,
) -> None:
    """Write the network's finished jobs as a trace and print its fleet spec (admin).

    Replay it, or ask what-if: gpunet sim run --trace trace.csv --fleet "<fleet>,4xH100-80GB"
    """

    def go() -> tuple[int, str, list[str]]:
        table = load_throughputs(throughputs)
        with Client() as client:
            data = client.sim_export()
        done = from_export(data, table)
        if not done.jobs:
            raise ValidationFailed("jobs", "the network has no finished jobs that ran")
        if output.suffix == ".jsonl":
            write_jsonl([e.trace for e in done.jobs], output)
        else:
            write_csv(done.jobs, output)
        if fleet_out is not None:
            fleet_out.write_text(done.fleet + "\n")
        return len(done.jobs), done.fleet, done.skipped

    n, fleet, skipped = _guard(go)
    for why in skipped:
        err.print(f"left out: {why}")
    err.print(f"wrote {n} jobs to {output}; replay with --fleet {fleet!r}")
    typer.echo(fleet)
