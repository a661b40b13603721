"""Fail-over benchmark: how long from kill -9 of the leading replica to the next placement.

Starts two ``gpunet server`` replicas on a fresh PostgreSQL database (dropped afterwards) and
two agents (simulated GPUs) that know both URLs. Each trial: find the leader, kill -9 it,
submit a short job through the surviving replica at once, and time until the job is placed
(an attempt assigned: only a leader places); then restart the killed replica, which joins as
a follower. Prints p50/p99/max of the fail-over time.

    python benchmarks/failover.py --trials 20
    python benchmarks/failover.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpunet.store.db import Database  # noqa: E402
from gpunet.store.tables import Job  # noqa: E402
from tests.conftest import pg_database  # noqa: E402
from tests.e2e.chaos import AGENT_FLAGS  # noqa: E402
from tests.e2e.replicas import Replicas  # noqa: E402


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _placed(db: Database, job_id: str) -> bool:
    with db.sessions() as s:
        return s.scalar(select(Job.current_attempt_id).where(Job.id == job_id)) is not None


def trial(n: Replicas, db: Database, k: int) -> dict[str, float]:
    lead = n.leader(timeout=30)
    follow = next(i for i in range(len(n.urls)) if i != lead)
    n.kill9(lead)
    killed = time.monotonic()
    r = httpx.post(
        n.urls[follow] + "/v1/jobs",
        json={"name": f"failover-{k}", "command": "true"},
        headers={"Authorization": f"Bearer {n.user}"},
        timeout=10,
    )
    r.raise_for_status()
    job_id = str(r.json()["id"])
    while not _placed(db, job_id):
        if time.monotonic() - killed > 60:
            raise RuntimeError(f"trial {k}: no placement 60 s after the leader was killed")
        time.sleep(0.02)
    placed = time.monotonic() - killed
    elected = time.monotonic()
    n.start_replica(lead)  # back as a follower
    return {"placed_s": placed, "restart_s": time.monotonic() - elected}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="5 trials")
    p.add_argument("--lease-timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    trials = 5 if args.quick else args.trials
    root = Path(tempfile.mkdtemp(prefix="gpunet-failover-"))
    with pg_database() as url:
        n = Replicas(root, url, count=2, lease_timeout=args.lease_timeout)
        db = Database(url)
        try:
            n.start_coordinator()
            n.owner = n.token("provider", "owner")
            every = n.url
            for k in range(2):
                n.url = ",".join(n.urls[k:] + n.urls[:k])
                n.start_agent(f"a{k}", "2xA100-80GB", n.owner, extra=AGENT_FLAGS)
            n.url = every
            n.user = n.token("consumer", "alice")
            n.wait_online(2, timeout=60)
            times = [trial(n, db, k) for k in range(trials)]
        finally:
            db.engine.dispose()
            n.close()
    placed = [t["placed_s"] for t in times]
    res: dict[str, Any] = {
        "benchmark": "failover",
        "date": date.today().isoformat(),
        "cores": os.cpu_count(),
        "trials": trials,
        "leader_killed_to_placement_s": {
            "p50": round(statistics.median(placed), 2),
            "p99": round(_pct(placed, 0.99), 2),
            "max": round(max(placed), 2),
        },
        "replica_restart_s_median": round(statistics.median(t["restart_s"] for t in times), 2),
    }
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        f = res["leader_killed_to_placement_s"]
        print(
            f"{trials} trials: leader killed -> next placement p50 {f['p50']} s, "
            f"p99 {f['p99']} s, max {f['max']} s"
        )


if __name__ == "__main__":
    main()
