"""Gavel's reference workload: calibration of the simulator and quality of gpunet's policies.

On Gavel's job streams (rates 1.6, 2.0, 2.4 jobs/h; seeds 0 and 1; 12 V100 + 12 P100 + 12 K80;
jobs 100-399 measured; 360 s rounds; no preemption cost):

1. calibration: ``gavel-compat`` (Gavel's loop around gpunet's ``fifo_perf``) against Gavel's
   own ``fifo_perf`` average JCT, per seed (gate: within 2%);
2. quality: each gpunet policy's average JCT as a ratio to Gavel's ``max_min_fairness_perf``,
   paired per seed (gate for ``default``: mean of seeds <= 0.95 / 0.90 / 0.85 at 1.6 / 2.0 / 2.4
   and no seed above 1.0), with p99 JCT and the physical floor (each job alone on its fastest
   GPU type).

Run: ``python benchmarks/sim_gavel.py [--json] [--policies default,las,fifo]
[--preemption-cost S]`` (the cost applies to gpunet's loop; Gavel's reference has none).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpunet.sim import (  # noqa: E402
    SimConfig,
    load_throughputs,
    metrics,
    parse_fleet,
    parse_trace,
    simulate,
)

RATES = ("1.6", "2.0", "2.4")
SEEDS = ("0", "1")
GATES = {"1.6": 0.95, "2.0": 0.90, "2.4": 0.85}
DATA = resources.files("gpunet.data.gavel")


def reference() -> dict[tuple[str, str, str], float]:
    rows = csv.DictReader(DATA.joinpath("reference_avg_jct.csv").read_text().splitlines())
    return {
        (r["gavel_policy"], r["input_rate_jobs_per_hr"], r["seed"]): float(r["avg_jct_s"])
        for r in rows
    }


def trace_text(rate: str, seed: str) -> str:
    name = f"continuous-single_v100-12_p100-12_k80-12_rate{rate}_seed{seed}.trace"
    return DATA.joinpath("traces").joinpath(name).read_text()


def run(policies: list[str], preemption_cost_s: float = 0.0) -> dict[str, object]:
    ref = reference()
    fleet = parse_fleet("12xV100,12xP100,12xK80")
    table = load_throughputs()
    rows = []
    for rate in RATES:
        for seed in SEEDS:
            jobs = parse_trace(trace_text(rate, seed), f"rate{rate}_seed{seed}.trace")
            for policy in ["gavel-compat", *policies]:
                t0 = time.perf_counter()
                cfg = SimConfig(
                    policy=policy,
                    round_s=360,
                    preemption_cost_s=preemption_cost_s,
                    window=(100, 399),
                )
                m = metrics(simulate(jobs, fleet, table, cfg))
                mmf = ref[("max_min_fairness_perf", rate, seed)]
                rows.append(
                    {
                        "rate": float(rate),
                        "seed": int(seed),
                        "policy": policy,
                        "avg_jct_h": m["avg_jct_s"] / 3600,
                        "p99_jct_h": m["p99_jct_s"] / 3600,
                        "floor_h": m["floor_avg_jct_s"] / 3600,
                        "ratio_to_fifo_perf": m["avg_jct_s"] / ref[("fifo_perf", rate, seed)],
                        "ratio_to_mmf_perf": m["avg_jct_s"] / mmf,
                        "floor_ratio_to_mmf_perf": m["floor_avg_jct_s"] / mmf,
                        "preemptions": m["preemptions"],
                        "utilization": m["utilization"],
                        "decision_time_ms": m["decision_time_s"] * 1000,
                        "wall_s": time.perf_counter() - t0,
                    }
                )
                print(
                    f"  rate {rate} seed {seed} {policy:<13} {rows[-1]['avg_jct_h']:6.2f} h",
                    file=sys.stderr,
                    flush=True,
                )
    gates: dict[str, object] = {}
    cal = [r for r in rows if r["policy"] == "gavel-compat"]
    gates["calibration_max_error"] = max(abs(r["ratio_to_fifo_perf"] - 1) for r in cal)
    gates["calibration_pass"] = gates["calibration_max_error"] <= 0.02
    quality = {}
    for rate in RATES:
        per_seed = [
            r["ratio_to_mmf_perf"]
            for r in rows
            if r["policy"] == "default" and r["rate"] == float(rate)
        ]
        if per_seed:
            mean = statistics.fmean(per_seed)
            quality[rate] = {
                "per_seed": per_seed,
                "mean": mean,
                "gate": GATES[rate],
                "pass": mean <= GATES[rate] and max(per_seed) <= 1.0,
            }
    gates["quality"] = quality
    return {"rows": rows, "gates": gates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--policies", default="default,las,fifo")
    ap.add_argument(
        "--preemption-cost",
        type=float,
        default=0.0,
        help="seconds lost per restart in gpunet's loop (the gate uses 0)",
    )
    args = ap.parse_args()
    out = run([p for p in args.policies.split(",") if p], args.preemption_cost)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"{'rate':>4} {'seed':>4} {'policy':<13} {'avg JCT h':>9} {'/fifo_perf':>10} "
        f"{'/mmf_perf':>9} {'p99 h':>7} {'floor/mmf':>9} {'preempt':>8}"
    )
    for r in out["rows"]:  # type: ignore[union-attr]
        print(
            f"{r['rate']:>4} {r['seed']:>4} {r['policy']:<13} {r['avg_jct_h']:>9.2f} "
            f"{r['ratio_to_fifo_perf']:>10.4f} {r['ratio_to_mmf_perf']:>9.3f} "
            f"{r['p99_jct_h']:>7.1f} {r['floor_ratio_to_mmf_perf']:>9.3f} "
            f"{r['preemptions']:>8}"
        )
    print(json.dumps(out["gates"], indent=2))


if __name__ == "__main__":
    main()
