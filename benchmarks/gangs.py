"""Gang benchmark: how fast a job on several nodes starts, and how fast it is torn down when one
of its members is lost.

A real coordinator (``gpunet server``, SQLite in a temporary directory, lease ``--lease-timeout``)
and ``--agents`` real agents with one simulated GPU each, on 127.0.0.1; isolation is whatever
the agents detect on the host. Times come from the coordinator's own records (no polling error):

* start: a gang of N nodes (``sleep``) is submitted; from the job's creation to the last
  member's start report (every member fetched its work, passed the rendezvous check and
  started its command), for N = each of ``--sizes``. The job is cancelled before the next trial.
* teardown: a gang of ``--teardown-nodes`` runs; one member's agent (random rank) is killed
  with SIGKILL; from the moment the coordinator declares that member lost (its lease lapsed) to
  the last other member's confirmed stop. The time from the kill to the loss (the lease) is
  reported beside it. The killed agent is started again (same home) before the next trial.

    python benchmarks/gangs.py --json
    python benchmarks/gangs.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import Network, wait_for  # noqa: E402

ACTIVE = ("assigned", "running", "stopping")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _members(job: dict[str, Any], number: int) -> list[dict[str, Any]]:
    return sorted((a for a in job["attempts"] if a["number"] == number), key=lambda a: a["rank"])


def _submit(n: Network, nodes: int) -> str:
    r = n.cli(
        n.user,
        "run",
        "--detach",
        "--nodes",
        str(nodes),
        "--gpus",
        "1",
        "--max-retries",
        "5",
        "--",
        "sleep",
        "600",
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split()[-1]


def _all_running(n: Network, job_id: str, number: int = 1) -> dict[str, Any] | None:
    j = n.cli_json(n.user, "jobs", "show", job_id)
    m = _members(j, number)
    return j if m and all(a["state"] == "running" for a in m) else None


def _cancel(n: Network, job_id: str) -> None:
    n.cli(n.user, "cancel", job_id)

    def idle() -> bool:
        j = n.cli_json(n.user, "jobs", "show", job_id)
        return all(a["state"] not in ACTIVE for a in j["attempts"])

    wait_for(idle, 60, "the gang's members to stop")


def start_trial(n: Network, nodes: int) -> float:
    job_id = _submit(n, nodes)
    j = wait_for(lambda: _all_running(n, job_id), 120, f"a {nodes}-node gang to run", every=0.2)
    took = max(_t(a["started_at"]) for a in _members(j, 1)) - _t(j["created_at"])
    _cancel(n, job_id)
    return took


def teardown_trial(n: Network, nodes: int) -> dict[str, float]:
    job_id = _submit(n, nodes)
    j = wait_for(lambda: _all_running(n, job_id), 120, "the gang to run", every=0.2)
    members = _members(j, 1)
    victim_att = random.choice(members)
    victim = next(a for a in n.agents if n.agent_credentials(a)["node_id"] == victim_att["node_id"])
    n.agents[victim].kill9()
    killed = time.time()

    def torn_down() -> dict[str, Any] | None:
        j = n.cli_json(n.user, "jobs", "show", job_id)
        m = _members(j, 1)
        return j if all(a["state"] not in ACTIVE for a in m) else None

    j = wait_for(torn_down, 120, "the gang to be torn down", every=0.2)
    m = _members(j, 1)
    lost = next(a for a in m if a["id"] == victim_att["id"])
    assert lost["state"] == "lost", lost
    lost_at = _t(lost["finished_at"])
    others = [_t(a["finished_at"]) for a in m if a["id"] != lost["id"]]
    _cancel(n, job_id)
    n.agents[victim].stop()
    n.start_agent(victim, "1xA100-80GB", n.owner, extra=["--accept-unisolated-jobs"])
    n.wait_online(len(n.agents), timeout=120)
    return {
        "kill_to_lost_s": round(lost_at - killed, 2),
        "teardown_s": round(max(others) - lost_at, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--sizes", default="2,8", help="gang sizes to start, comma-separated")
    ap.add_argument("--trials", type=int, default=20, help="start trials per size")
    ap.add_argument("--teardown-nodes", type=int, default=2)
    ap.add_argument("--teardown-trials", type=int, default=10)
    ap.add_argument("--lease-timeout", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="3 trials each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.trials = args.teardown_trials = 3
    sizes = [int(x) for x in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="gpunet-gangs-"))
    n = Network(root, f"sqlite:///{root / 'gpunet.db'}", lease_timeout=args.lease_timeout)
    starts: dict[int, list[float]] = {}
    teardowns: list[dict[str, float]] = []
    try:
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        for i in range(args.agents):
            n.start_agent(f"a{i + 1}", "1xA100-80GB", n.owner, extra=["--accept-unisolated-jobs"])
        n.user = n.token("consumer", "bench")
        n.wait_online(args.agents, timeout=120)
        for size in sizes if args.trials else []:
            starts[size] = []
            for _ in range(args.trials):
                starts[size].append(round(start_trial(n, size), 3))
            if not args.json:
                print(f"start, {size} nodes: {starts[size]}", flush=True)
        for _ in range(args.teardown_trials):
            teardowns.append(teardown_trial(n, args.teardown_nodes))
            if not args.json:
                print(f"teardown: {teardowns[-1]}", flush=True)
    finally:
        n.close()
        shutil.rmtree(root, ignore_errors=True)
    down = [t["teardown_s"] for t in teardowns]
    lease = [t["kill_to_lost_s"] for t in teardowns]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "agents": args.agents,
        "lease_timeout_s": args.lease_timeout,
        "start_s": {
            str(size): {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "runs": xs}
            for size, xs in starts.items()
        },
        "teardown": {
            "nodes": args.teardown_nodes,
            "teardown_s": {"p50": pct(down, 0.5), "p99": pct(down, 0.99), "max": max(down)},
            "kill_to_lost_s": {"p50": pct(lease, 0.5), "p99": pct(lease, 0.99)},
            "runs": teardowns,
        }
        if teardowns
        else None,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
