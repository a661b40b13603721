"""Recovery benchmark: a node is lost (its agent killed with -9) while it runs a job that
checkpoints; how long until the job runs again on another node from its checkpoint, and how
much progress was lost.

A real coordinator (``gpunet server``, SQLite in a temporary directory, the lease timeout of
``--lease-timeout``, default 30 s as in production) and two real agents on simulated GPUs, on
127.0.0.1. Each trial submits a job that counts steps into $GPUNET_CHECKPOINT_DIR (one step
every 0.2 s, written atomically) with ``checkpoint.interval_s`` = ``--interval``; once its first
checkpoint is saved, the trial waits a random part of one interval (so the kill lands anywhere
between two uploads), reads the job's count on the host and kills its agent with SIGKILL. It
then polls the job's output until the next attempt prints the count it resumed from.

* recovery time: from the kill to that line (lease lapse, re-queue, placement, the archive and
  checkpoint download, the process start);
* progress lost: the count at the kill minus the count resumed from, against the steps of one
  checkpoint interval (``--interval`` / 0.2 s).

The killed agent is started again (same home) before the next trial, so two nodes are always
there. Isolation is whatever the agents detect on the host (the sandbox when available).

    python benchmarks/recovery.py --trials 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import Network, wait_for  # noqa: E402

STEP_S = 0.2
COUNTER = textwrap.dedent("""
    import os, sys, time
    path = os.path.join(os.environ["GPUNET_CHECKPOINT_DIR"], "count")
    n = int(open(path).read()) if os.path.exists(path) else 0
    print(f"attempt {os.environ['GPUNET_ATTEMPT_NUMBER']} resumes at {n}", flush=True)
    while True:
        time.sleep(0.2)
        n += 1
        with open(path + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(path + ".tmp", path)
""")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def trial(
    n: Network, work: Path, spec: Path, interval: float, homes: dict[str, Path]
) -> dict[str, Any]:
    job = n.cli_json(n.user, "submit", str(spec), "--workdir", str(work))["id"]
    saved = wait_for(
        lambda: n.cli_json(n.user, "jobs", "checkpoints", job), interval * 4 + 60, "a checkpoint"
    )
    info = n.cli_json(n.user, "jobs", "show", job)
    att = next(a for a in info["attempts"] if a["id"] == saved[0]["attempt_id"])
    victim = next(a for a in n.agents if n.agent_credentials(a)["node_id"] == att["node_id"])
    time.sleep(random.uniform(0, interval))
    count_file = homes[victim] / "work" / att["id"] / ".gpunet-checkpoint" / "count"
    at_kill = int(count_file.read_text())
    n.agents[victim].kill9()
    killed = time.monotonic()
    pattern = re.compile(r"attempt (\d+) resumes at (\d+)")

    def resumed() -> tuple[int, int] | None:
        r = n.cli(n.user, "logs", job)
        found = [(int(a), int(c)) for a, c in pattern.findall(r.stdout)]
        later = [f for f in found if f[0] > att["number"]]
        return later[-1] if later else None

    _, resumed_at = wait_for(resumed, 300, "the job to resume elsewhere", every=0.1)
    took = time.monotonic() - killed
    n.cli(n.user, "cancel", job)
    # the lost node comes back (same home) for the next trial
    n.agents[victim].stop()
    n.start_agent(victim, "1xA100-80GB", n.owner)
    n.wait_online(2, timeout=120)
    wait_for(lambda: n.cli_json(n.user, "jobs", "show", job)["state"] == "cancelled", 60, "cancel")
    return {
        "recovery_s": round(took, 2),
        "count_at_kill": at_kill,
        "resumed_at": resumed_at,
        "steps_lost": at_kill - resumed_at,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--lease-timeout", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0, help="checkpoint.interval_s")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpunet-recovery-"))
    work = root / "work"
    work.mkdir()
    (work / "job.py").write_text(COUNTER)
    spec = root / "job.yaml"
    spec.write_text(
        f"name: counter\ncommand: [python3, job.py]\nmax_retries: 100\n"
        f"checkpoint: {{interval_s: {args.interval}}}\n"
    )
    n = Network(root, f"sqlite:///{root / 'gpunet.db'}", lease_timeout=args.lease_timeout)
    homes = {a: root / f"agent-{a}" for a in ("a1", "a2")}
    results: list[dict[str, Any]] = []
    try:
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        for a in homes:
            n.start_agent(a, "1xA100-80GB", n.owner)
        n.user = n.token("consumer", "bench")
        n.wait_online(2)
        for i in range(args.trials):
            r = trial(n, work, spec, args.interval, homes)
            results.append(r)
            if not args.json:
                print(f"trial {i + 1}: {r}", flush=True)
    finally:
        n.close()
        shutil.rmtree(root, ignore_errors=True)
    rec = [r["recovery_s"] for r in results]
    lost = [r["steps_lost"] for r in results]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "trials": len(results),
        "lease_timeout_s": args.lease_timeout,
        "interval_s": args.interval,
        "steps_per_interval": round(args.interval / STEP_S),
        "recovery_s": {"p50": pct(rec, 0.5), "p99": pct(rec, 0.99), "max": max(rec)},
        "steps_lost": {"p50": pct(lost, 0.5), "p99": pct(lost, 0.99), "max": max(lost)},
        "runs": results,
    }
    print(json.dumps(report, indent=2) if args.json else json.dumps(report["recovery_s"]))
    if not args.json:
        print(
            "steps lost:", report["steps_lost"], "of", report["steps_per_interval"], "per interval"
        )


if __name__ == "__main__":
    main()
