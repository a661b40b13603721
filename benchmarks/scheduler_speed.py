"""How fast the scheduler decides, on heterogeneous fleets of 100 to 10,000 GPUs.

For each size N: a fleet of N GPUs (8 per node, six models, some priced) and N pending jobs
(1, 2, 4 or 8 GPUs; some pinned to models, memory or a price cap). Measures

- placements per second of ``plan()`` with ``fifo`` on an idle fleet,
- one full round of the ``default`` policy, with half the jobs holding GPUs (``running_on``)
  so it may keep, move or preempt them,
- ``explain()`` for one pending job (what ``gpunet jobs why`` runs) on a busy fleet.

Run: ``python benchmarks/scheduler_speed.py [--json] [--repeat 5] [--sizes 100,1000,10000]``.
Medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpunet.catalog import catalog  # noqa: E402
from gpunet.core.scheduling import (  # noqa: E402
    GpuView,
    JobRequest,
    NodeView,
    Snapshot,
    explain,
    plan,
)

MODELS = ("H100-80GB", "A100-80GB", "L40S", "A10", "T4", "V100")
PRICES = {"H100-80GB": "2.50", "A100-80GB": "1.60", "L40S": "0.90", "A10": "0.50"}
CLASSES = [f"class-{i}" for i in range(26)]


def fleet(n: int, rng: random.Random, busy_fraction: float = 0.0) -> Snapshot:
    nodes, gpus = [], []
    for i in range(0, n, 8):
        model = MODELS[(i // 8) % len(MODELS)]
        spec = catalog()[model]
        node = f"node-{i // 8}"
        nodes.append(NodeView(node, online=rng.random() > 0.01))
        price = PRICES.get(model)
        for k in range(min(8, n - i)):
            gpus.append(
                GpuView(
                    f"{node}/{k}",
                    node,
                    model,
                    spec.memory_mb,
                    spec.compute_capability,
                    busy=rng.random() < busy_fraction,
                    healthy=rng.random() > 0.005,
                    price_per_hour=Decimal(price) if price else None,
                )
            )
    speed = {m: catalog()[m].bf16_tflops or catalog()[m].fp32_tflops or 1.0 for m in MODELS}
    table = {c: {m: speed[m] * rng.uniform(0.5, 1.5) for m in MODELS} for c in CLASSES}
    return Snapshot(tuple(nodes), tuple(gpus), throughputs=table, now=1e6)


def jobs(n: int, rng: random.Random) -> list[JobRequest]:
    out = []
    for i in range(n):
        u = rng.random()
        count = 1 if u < 0.7 else 2 if u < 0.8 else 4 if u < 0.95 else 8
        out.append(
            JobRequest(
                id=f"job-{i}",
                account=f"acct-{rng.randrange(50)}",
                gpu_count=count,
                gpu_models=("H100-80GB", "A100-80GB") if rng.random() < 0.1 else (),
                min_memory_mb=40000 if rng.random() < 0.1 else 0,
                max_price=Decimal("1.00") if rng.random() < 0.1 else None,
                priority=rng.randrange(3),
                submitted_at=rng.uniform(0, 1e6),
                job_class=rng.choice(CLASSES),
                attained_service_s=rng.uniform(0, 1e5),
            )
        )
    return out


def with_running(snap: Snapshot, pending: list[JobRequest], rng: random.Random):
    """Half the jobs hold GPUs: mark those GPUs busy and set the jobs' running_on."""
    free = [g for g in snap.gpus if not g.busy]
    held: dict[str, tuple[str, ...]] = {}
    by_node: dict[str, list[str]] = {}
    for g in free:
        by_node.setdefault(g.node_id, []).append(g.id)
    nodes = list(by_node)
    out = []
    for j in pending:
        if j.gpu_count == 1 and rng.random() < 0.5 and nodes:
            node = nodes[rng.randrange(len(nodes))]
            gid = by_node[node].pop()
            if not by_node[node]:
                nodes.remove(node)
            held[gid] = (j.id,)
            out.append(
                JobRequest(**{**{f: getattr(j, f) for f in j.__slots__}, "running_on": (gid,)})
            )
        else:
            out.append(j)
    gpus = tuple(
        GpuView(**{**{f: getattr(g, f) for f in g.__slots__}, "busy": True}) if g.id in held else g
        for g in snap.gpus
    )
    return Snapshot(snap.nodes, gpus, snap.throughputs, now=snap.now), out


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def run(sizes: list[int], repeat: int) -> list[dict[str, float | int]]:
    rows = []
    for n in sizes:
        rng = random.Random(n)
        snap = fleet(n, rng)
        pending = jobs(n, rng)
        t_fifo, p = median_time(
            lambda snap=snap, pending=pending: plan(snap, pending, "fifo"), repeat
        )
        placed = len(p.placements)  # type: ignore[attr-defined]
        rsnap, rjobs = with_running(snap, pending, rng)
        t_round, r = median_time(
            lambda rsnap=rsnap, rjobs=rjobs: plan(rsnap, rjobs, "default"), repeat
        )
        busy = fleet(n, random.Random(n), busy_fraction=0.9)
        probe = pending[0]
        t_why, _ = median_time(lambda busy=busy, probe=probe: explain(busy, probe), max(repeat, 5))
        rows.append(
            {
                "gpus": n,
                "jobs": n,
                "placements": placed,
                "fifo_plan_s": t_fifo,
                "placements_per_s": placed / t_fifo,
                "default_round_s": t_round,
                "default_round_placements": len(r.placements),  # type: ignore[attr-defined]
                "default_round_preemptions": len(r.preemptions),  # type: ignore[attr-defined]
                "explain_ms": t_why * 1000,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="100,1000,10000")
    args = ap.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")], args.repeat)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "python": platform.python_version(),
                    "results": rows,
                },
                indent=2,
            )
        )
        return
    print(
        f"{'GPUs':>6} {'placed':>7} {'fifo plan s':>12} {'placements/s':>13} "
        f"{'default round s':>16} {'preempt':>8} {'why ms':>8}"
    )
    for r in rows:
        print(
            f"{r['gpus']:>6} {r['placements']:>7} {r['fifo_plan_s']:>12.4f} "
            f"{r['placements_per_s']:>13.0f} {r['default_round_s']:>16.4f} "
            f"{r['default_round_preemptions']:>8} {r['explain_ms']:>8.2f}"
        )


if __name__ == "__main__":
    main()
