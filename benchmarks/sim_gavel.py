"""Gavel's reference workload: calibration of the simulator and quality of gpunet's policies.

On Gavel's job streams (rates 1.6, 2.0, 2.4 jobs/h; seeds 0 and 1; 12 V100 + 12 P100 + 12 K80;
jobs 100-399 measured; 360 s rounds; no preemption cost):

1. calibration: ``gavel-compat`` (Gavel's loop around gpunet's ``fifo_perf``) against Gavel's
   own ``fifo_perf`` average JCT, per seed (gate: within 2%);
2. quality: each gpunet policy's average JCT as a ratio to Gavel's ``max_min_fairness_perf``,
   paired per seed (gate for ``default``: mean of seeds <= 0.95 / 0.90 / 0.85 at 1.6 / 2.0 / 2.4
   and no seed above 1.0), with p99 JCT and the physical floor (each job alone on its fastest
   GPU type).

3. multi-GPU: Gavel-style streams with Gavel's multi-GPU mix (70% 1 GPU, 10% 2, 15% 4, 5% 8;
   ``gpunet sim generate --multi-gpu``; 400 jobs at 0.8 and 1.0 jobs/h, seeds 0 and 1, jobs
   100-399 measured) on the same 36 GPUs in nodes of 4, as Gavel's servers (an 8-GPU job is a
   gang of 2 nodes x 4). Gavel publishes no reference for these streams, so the default policy
   is compared with gpunet's other policies on the same stream (gate: average JCT <= 0.90x the
   best other policy, and never above ``las``).

Run: ``python benchmarks/sim_gavel.py [--json] [--policies default,las,fifo]
[--preemption-cost S] [--suite single|multi|all]`` (the cost applies to gpunet's loop; Gavel's
reference has none).
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
from gpunet.sim.generate import generate  # noqa: E402

RATES = ("1.6", "2.0", "2.4")
SEEDS = ("0", "1")
GATES = {"1.6": 0.95, "2.0": 0.90, "2.4": 0.85}
DATA = resources.files("gpunet.data.gavel")
MULTI_RATES = ("0.8", "1.0")
MULTI_JOBS = 400
MULTI_GATE = 0.90  # default / best other gpunet policy


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


def run_multi(policies: list[str], preemption_cost_s: float = 0.0) -> dict[str, object]:
    """Multi-GPU streams: every policy in gpunet's loop (``gavel-compat`` in Gavel's)."""
    fleet = parse_fleet("12xV100,12xP100,12xK80", gpus_per_node=4)
    table = load_throughputs()
    names = ["gavel-compat", *policies]
    rows = []
    for rate in MULTI_RATES:
        for seed in SEEDS:
            jobs = generate("gavel", MULTI_JOBS, float(rate), table, seed=int(seed), multi_gpu=True)
            for policy in names:
                t0 = time.perf_counter()
                cfg = SimConfig(
                    policy=policy,
                    round_s=360,
                    preemption_cost_s=preemption_cost_s,
                    window=(100, MULTI_JOBS - 1),
                )
                m = metrics(simulate(jobs, fleet, table, cfg))
                rows.append(
                    {
                        "rate": float(rate),
                        "seed": int(seed),
                        "policy": policy,
                        "avg_jct_h": m["avg_jct_s"] / 3600,
                        "p99_jct_h": m["p99_jct_s"] / 3600,
                        "floor_h": m["floor_avg_jct_s"] / 3600,
                        "preemptions": m["preemptions"],
                        "utilization": m["utilization"],
                        "decision_time_ms": m["decision_time_s"] * 1000,
                        "wall_s": time.perf_counter() - t0,
                    }
                )
                print(
                    f"  multi-GPU rate {rate} seed {seed} {policy:<13} "
                    f"{rows[-1]['avg_jct_h']:6.2f} h",
                    file=sys.stderr,
                    flush=True,
                )
    gates = []
    for rate in MULTI_RATES:
        for seed in SEEDS:
            here = {
                r["policy"]: r["avg_jct_h"]
                for r in rows
                if r["rate"] == float(rate) and r["seed"] == int(seed)
            }
            if "default" not in here:
                continue
            others = {p: v for p, v in here.items() if p != "default"}
            best = min(others, key=lambda p: others[p])
            to_best = here["default"] / others[best]
            to_las = here["default"] / here["las"] if "las" in here else float("nan")
            gates.append(
                {
                    "rate": float(rate),
                    "seed": int(seed),
                    "best_other": best,
                    "ratio_to_best_other": to_best,
                    "ratio_to_las": to_las,
                    "pass": to_best <= MULTI_GATE and not to_las > 1.0,
                }
            )
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
    ap.add_argument(
        "--suite",
        choices=("single", "multi", "all"),
        default="all",
        help="Gavel's single-GPU streams, the multi-GPU streams, or both",
    )
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    multi = run_multi(policies, args.preemption_cost) if args.suite != "single" else None
    if args.suite == "multi":
        _print_multi(multi, args.json)
        return
    out = run(policies, args.preemption_cost)
    if args.json:
        print(json.dumps({**out, "multi_gpu": multi} if multi else out, indent=2))
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
    if multi is not None:
        _print_multi(multi, False)


def _print_multi(multi: dict[str, object] | None, as_json: bool) -> None:
    if multi is None:
        return
    if as_json:
        print(json.dumps({"multi_gpu": multi}, indent=2))
        return
    print(
        f"\nmulti-GPU streams\n{'rate':>4} {'seed':>4} {'policy':<13} {'avg JCT h':>9} "
        f"{'p99 h':>7} {'floor h':>7} {'util':>5} {'preempt':>8}"
    )
    for r in multi["rows"]:  # type: ignore[union-attr]
        print(
            f"{r['rate']:>4} {r['seed']:>4} {r['policy']:<13} {r['avg_jct_h']:>9.2f} "
            f"{r['p99_jct_h']:>7.1f} {r['floor_h']:>7.2f} {r['utilization']:>5.2f} "
            f"{r['preemptions']:>8}"
        )
    print(json.dumps(multi["gates"], indent=2))


if __name__ == "__main__":
    main()
