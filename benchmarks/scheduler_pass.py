"""Scheduler pass cost in the store: SQL statements and time per pass, by queue length.

Builds a fresh store (SQLite in a temporary directory, or a fresh PostgreSQL database that is
dropped afterwards) holding one consumer account with credits, a GPU quota and a monthly
budget, a fleet of priced GPUs, and N queued one-GPU jobs of that account. Then it runs the
coordinator's scheduler pass (``services.scheduling.tick``) in process and counts the SQL
statements each pass sends (a SQLAlchemy ``before_cursor_execute`` listener):

* the placing pass: the first pass, which fills every free GPU, or starts
  ``MAX_STARTS_PER_PASS`` (500) jobs on a deeper queue (the passes that start the rest run
  unmeasured);
* idle passes: later passes with every GPU busy and the queue still full (what the loop runs
  every interval while nothing changes); the figure is their median;
* the warm placing pass: the placed attempts end (their state only) and the next pass fills
  the GPUs again, with whatever the previous passes left in caches.

``--steady K`` measures a steady stream instead: every GPU starts busy (one running attempt
each) with N jobs queued; before each of ``--rounds`` passes, K attempts finish and K jobs
are submitted (rows written directly, as the API would leave them), so each pass places K
jobs with N still waiting; the figures are the medians of those passes, then of 5 passes
after which nothing changed.

``--readers`` measures what reads the fleet outside the pass instead, on a fleet of
``--nodes`` x ``--gpus-per-node`` GPUs and no queue: a batch submit of ``--batch`` one-GPU specs
and a single submit (``services.jobs``: the capacity check), and the explanation of a queued
job (``services.scheduling.why``: GET /v1/jobs/{id}/why), and the capacity check's read of
the fleet alone (``PassCache.capacity`` without a verdict). One GPU's price changes before each
call, so each reads one changed row; the figures are the medians of ``--rounds`` rounds, after
one call of each that warms the caches.

``--telemetry quiet|jitter`` (with ``--steady``) adds the telemetry flush every node's
heartbeats cause (``services.leases.flush_telemetry``, one flush per second of heartbeats)
before each measured pass, warm-up and unchanged passes included: ``quiet``, every GPU
reports the same readings each time (250 W); ``jitter``, every GPU's power draw moves by up
to +-8 W at each flush, as a real GPU's does. The flushes are timed apart (``flush_ms``,
``flush_cpu_ms``, and ``flush_gpu_rows``: GPU rows the flush's UPDATE sent).

Each size runs on ``--runs`` fresh stores; the figures are medians, wall time and this
process's CPU time (which excludes a PostgreSQL server's work but is steadier on a shared
machine). The first run of a process
also builds the default policy's Gittins table (about 0.6 s, once per process).

    python benchmarks/scheduler_pass.py --sizes 10,100,1000 --runs 3
    python benchmarks/scheduler_pass.py --database postgres \\
        --pg-url postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/scheduler_pass.py --readers --nodes 1000 --gpus-per-node 8 --runs 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, select, text, update

from gpunet.core import ledger as L
from gpunet.core.jobspec import JobSpec
from gpunet.services import billing, jobs, scheduling
from gpunet.services.auth import Principal, Role
from gpunet.services.leases import flush_telemetry
from gpunet.services.pass_cache import cache_for
from gpunet.services.runtime import LeaseBook
from gpunet.store.db import Database, normalize_url
from gpunet.store.tables import Account, AccountQuota, Attempt, Gpu, Job

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import rows  # noqa: E402

NODES = 4
GPUS_PER_NODE = 4


class StatementCounter:
    def __init__(self, db: Database) -> None:
        self.n = 0
        self.gpu_rows = 0  # GPU rows sent by UPDATEs of gpus
        event.listen(db.engine, "before_cursor_execute", self._count)

    def _count(self, _c: Any, _cur: Any, stmt: str, params: Any, _ctx: Any, many: bool) -> None:
        self.n += 1
        if stmt.lstrip().upper().startswith("UPDATE GPUS"):
            self.gpu_rows += len(params) if many else 1


class Telemetry:
    """Every node's heartbeats between two passes, flushed as the coordinator does."""

    def __init__(self, db: Database, counter: StatementCounter, jitter: bool) -> None:
        self.db, self.counter, self.jitter = db, counter, jitter
        self.leases = LeaseBook()
        self.rng = random.Random(7)
        self.at = datetime.now(UTC)
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.rows: list[int] = []

    def flush(self) -> None:
        self.at += timedelta(seconds=1)
        for n in range(NODES):
            reports = [
                {
                    "index": i,
                    "utilization_pct": 0.0,
                    "memory_used_mb": 0.0,
                    "temperature_c": 35.0,
                    "power_w": 250.0 + (self.rng.uniform(-8, 8) if self.jitter else 0.0),
                }
                for i in range(GPUS_PER_NODE)
            ]
            self.leases.renew(f"node{n}", self.at, reports)
        self.counter.gpu_rows = 0
        t, c = time.perf_counter(), time.process_time()
        flush_telemetry(self.db, self.leases)
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        self.rows.append(self.counter.gpu_rows)

    def figures(self) -> dict[str, float]:
        return {
            "flush_ms": statistics.median(self.wall) * 1000,
            "flush_cpu_ms": statistics.median(self.cpu) * 1000,
            "flush_gpu_rows": statistics.median(self.rows),
        }


def populate(db: Database, queued: int) -> None:
    at = datetime.now(UTC) - timedelta(minutes=5)
    with db.transaction() as s:
        s.add(Account(id="acct_owner", name="owner", created_at=at))
        s.add(Account(id="acct_user", name="user", created_at=at))
        s.flush()
        s.add(
            AccountQuota(
                account_id="acct_user", max_concurrent_gpus=10_000, monthly_spend=Decimal("1000000")
            )
        )
        for n in range(NODES):
            rows.add_node(s, f"node{n}", GPUS_PER_NODE, at)
        s.flush()
        billing.post(s, L.grant("acct_user", Decimal("1000000"), "grant:bench"))
        spec = {"name": "bench", "command": ["true"], "resources": {"gpus": 1}}
        for k in range(queued):
            rows.add_queued_job(s, f"job{k:06d}", at + timedelta(seconds=k), spec)


@contextlib.contextmanager
def store(kind: str, pg_url: str) -> Iterator[Database]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            db = Database(f"sqlite:///{Path(d) / 'bench.db'}")
            try:
                yield db
            finally:
                db.dispose()
        return
    name = f"gpunet_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalize_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(pg_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield db
    finally:
        db.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE "{name}"'))
        admin.dispose()


def timed_tick(
    db: Database,
    terms: billing.Terms,
    counter: StatementCounter,
    wall: list[float],
    cpu: list[float],
    statements: list[int],
) -> scheduling.TickResult:
    """One scheduler pass; its wall time, CPU time and statement count appended."""
    counter.n = 0
    t, c = time.perf_counter(), time.process_time()
    res = scheduling.tick(db, "default", terms)
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    statements.append(counter.n)
    return res


def fill(db: Database) -> list[str]:
    """Every GPU busy with a running one-GPU attempt; returns the attempt ids."""
    at = datetime.now(UTC) - timedelta(minutes=4)
    spec = {"name": "fill", "command": ["true"], "resources": {"gpus": 1}}
    jobs, attempts = [], []
    for n in range(NODES):
        for i in range(GPUS_PER_NODE):
            jid, aid = f"fill{n:05d}-{i}", f"att{n:05d}-{i}"
            jobs.append(
                {
                    "id": jid,
                    "account_id": "acct_user",
                    "name": "fill",
                    "spec": spec,
                    "state": "running",
                    "priority": 0,
                    "gpu_count": 1,
                    "max_retries": 0,
                    "created_at": at,
                    "attempts_made": 1,
                }
            )
            attempts.append(
                {
                    "id": aid,
                    "job_id": jid,
                    "number": 1,
                    "fencing_token": 1,
                    "node_id": f"node{n}",
                    "gpu_ids": [f"node{n}/{i}"],
                    "gpu_indices": [i],
                    "state": "running",
                    "created_at": at,
                    "started_at": at,
                }
            )
    with db.transaction() as s:
        s.execute(insert(Job), jobs)
        s.execute(insert(Attempt), attempts)
    return [str(a["id"]) for a in attempts]


def steady_run(
    kind: str, pg_url: str, queued: int, k: int, rounds: int, telemetry: str = "none"
) -> dict[str, Any]:
    with store(kind, pg_url) as db:
        db.migrate()
        populate(db, queued)
        running = fill(db)
        counter = StatementCounter(db)
        terms = billing.Terms()
        tel = None if telemetry == "none" else Telemetry(db, counter, telemetry == "jitter")
        if tel is not None:
            tel.flush()  # the first readings of every GPU
            tel.flush()
        scheduling.tick(db, "default", terms)  # warms the caches; every GPU is busy
        spec = {"name": "bench", "command": ["true"], "resources": {"gpus": 1}}
        ns: list[int] = []
        ss: list[float] = []
        cs: list[float] = []
        placed: list[int] = []
        for r in range(rounds):
            done, running = running[:k], running[k:]
            at = datetime.now(UTC)
            with db.transaction() as s:
                s.execute(
                    update(Attempt)
                    .where(Attempt.id.in_(done))
                    .values(state="succeeded", finished_at=at)
                )
                jobs = [a for (a,) in s.execute(select(Attempt.job_id).where(Attempt.id.in_(done)))]
                s.execute(update(Job).where(Job.id.in_(jobs)).values(state="succeeded"))
                for j in range(k):
                    rows.add_queued_job(s, f"new{r:04d}-{j:04d}", at, spec)
            if tel is not None:
                tel.flush()
            res = timed_tick(db, terms, counter, ss, cs, ns)
            placed.append(len(res.assigned))
            running += res.assigned
        idle_n: list[int] = []
        idle_s: list[float] = []
        idle_c: list[float] = []
        for _ in range(5):  # nothing changed since the last pass (but the telemetry)
            if tel is not None:
                tel.flush()
            assert not timed_tick(db, terms, counter, idle_s, idle_c, idle_n).assigned
        return {
            "idle_statements": statistics.median(idle_n),
            "idle_ms": statistics.median(idle_s) * 1000,
            "idle_cpu_ms": statistics.median(idle_c) * 1000,
            "steady_placed": statistics.median(placed),
            "steady_statements": statistics.median(ns),
            "steady_ms": statistics.median(ss) * 1000,
            "steady_cpu_ms": statistics.median(cs) * 1000,
            **(tel.figures() if tel is not None else {}),
        }


def one_run(kind: str, pg_url: str, queued: int, idle_passes: int) -> dict[str, Any]:
    with store(kind, pg_url) as db:
        db.migrate()
        populate(db, queued)
        counter = StatementCounter(db)
        terms = billing.Terms()
        t, c = time.perf_counter(), time.process_time()
        res = scheduling.tick(db, "default", terms)
        place_s, place_cpu = time.perf_counter() - t, time.process_time() - c
        place_n = counter.n
        placed = len(res.assigned)
        while res.more:  # a pass starts at most MAX_STARTS_PER_PASS: the rest, unmeasured
            res = scheduling.tick(db, "default", terms)
        idle_n: list[int] = []
        idle_s: list[float] = []
        idle_cpu: list[float] = []
        for _ in range(idle_passes):
            again = timed_tick(db, terms, counter, idle_s, idle_cpu, idle_n)
            assert not again.assigned, "an idle pass placed a job"
        # the placed attempts end (state only: no settlement), freeing every GPU; the next
        # pass places again with warm caches, as a busy coordinator does
        with db.transaction() as s:
            s.execute(update(Attempt).where(Attempt.state == "assigned").values(state="succeeded"))
            s.execute(update(Job).where(Job.state == "assigned").values(state="succeeded"))
        counter.n = 0
        t, c = time.perf_counter(), time.process_time()
        warm = scheduling.tick(db, "default", terms)
        warm_s, warm_cpu = time.perf_counter() - t, time.process_time() - c
        return {
            "placed": placed,
            "warm_placed": len(warm.assigned),
            "warm_statements": counter.n,
            "warm_ms": warm_s * 1000,
            "warm_cpu_ms": warm_cpu * 1000,
            "place_statements": place_n,
            "place_ms": place_s * 1000,
            "place_cpu_ms": place_cpu * 1000,
            "idle_statements": statistics.median(idle_n),
            "idle_ms": statistics.median(idle_s) * 1000,
            "idle_cpu_ms": statistics.median(idle_cpu) * 1000,
        }


def capacity_only(db: Database) -> None:
    """The capacity check's read of the fleet alone (no verdict computed)."""
    with db.sessions() as s:
        cache_for(db).capacity(s)


def readers_run(kind: str, pg_url: str, batch: int, rounds: int) -> dict[str, Any]:
    with store(kind, pg_url) as db:
        db.migrate()
        populate(db, 0)
        counter = StatementCounter(db)
        who = Principal(token_id="bench", role=Role.CONSUMER, account_id="acct_user")
        one = JobSpec.model_validate(
            {"name": "bench", "command": ["true"], "resources": {"gpus": 1}}
        )
        terms = billing.Terms()
        probe = jobs.submit(db, who, one, None)  # warms the caches; why() explains it
        jobs.submit_many(db, who, [one] * batch, None)
        scheduling.why(db, who, probe.id, "default", terms)
        changed = 0

        def timed(call: Any) -> tuple[float, float, int]:
            nonlocal changed
            changed += 1
            with db.transaction() as s:  # one GPU's price moves: one changed row to read
                gid = f"node{changed % NODES}/0"
                price = Decimal(2 + changed % 3)
                s.execute(update(Gpu).where(Gpu.id == gid).values(price_per_hour=price))
            counter.n = 0
            t, c = time.perf_counter(), time.process_time()
            call()
            return (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000, counter.n

        out: dict[str, list[float]] = {}
        calls = {
            "batch": lambda: jobs.submit_many(db, who, [one] * batch, None),
            "single": lambda: jobs.submit(db, who, one, None),
            "why": lambda: scheduling.why(db, who, probe.id, "default", terms),
            "fleet": lambda: capacity_only(db),
        }
        for _ in range(rounds):
            for name, call in calls.items():
                ms, cpu, n = timed(call)
                out.setdefault(f"{name}_ms", []).append(ms)
                out.setdefault(f"{name}_cpu_ms", []).append(cpu)
                out.setdefault(f"{name}_statements", []).append(n)
        return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="queued jobs, comma separated")
    ap.add_argument("--runs", type=int, default=3, help="fresh stores per size (medians)")
    ap.add_argument("--idle-passes", type=int, default=5)
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--nodes", type=int, default=NODES, help="nodes in the fleet")
    ap.add_argument("--gpus-per-node", type=int, default=GPUS_PER_NODE)
    ap.add_argument("--steady", type=int, default=0, help="K: a steady stream of K per pass")
    ap.add_argument("--rounds", type=int, default=10, help="--steady: passes measured")
    ap.add_argument("--readers", action="store_true", help="submits and why(), not passes")
    ap.add_argument("--batch", type=int, default=1000, help="--readers: specs in a batch")
    ap.add_argument(
        "--telemetry",
        choices=("none", "quiet", "jitter"),
        default="none",
        help="--steady: a telemetry flush before each pass; jitter: every GPU's power moves",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    globals().update(NODES=args.nodes, GPUS_PER_NODE=args.gpus_per_node)
    out = []
    if args.readers:
        runs = [
            readers_run(args.database, args.pg_url, args.batch, args.rounds)
            for _ in range(args.runs)
        ]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        if args.json:
            print(json.dumps(med, indent=2))
            return
        labels = (f"batch of {args.batch}", "single", "why", "the check's fleet read alone")
        for label, k in zip(labels, ("batch", "single", "why", "fleet"), strict=True):
            print(
                f"{label}: {med[k + '_statements']:.0f} statements, {med[k + '_ms']:.1f} ms "
                f"({med[k + '_cpu_ms']:.1f} ms CPU)",
                flush=True,
            )
        return
    for size in (int(x) for x in args.sizes.split(",")):
        if args.steady:
            runs = [
                steady_run(
                    args.database, args.pg_url, size, args.steady, args.rounds, args.telemetry
                )
                for _ in range(args.runs)
            ]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            med["queued"] = size
            out.append(med)
            if not args.json:
                print(
                    f"{size:>6} queued, {args.steady} per pass: "
                    f"{med['steady_statements']:.0f} statements, {med['steady_ms']:.1f} ms "
                    f"({med['steady_cpu_ms']:.1f} ms CPU); placed {med['steady_placed']:.0f}; "
                    f"unchanged: {med['idle_statements']:.0f} statements, "
                    f"{med['idle_ms']:.1f} ms ({med['idle_cpu_ms']:.1f} ms CPU)"
                    + (
                        f"; flush {med['flush_ms']:.1f} ms ({med['flush_cpu_ms']:.1f} ms CPU), "
                        f"{med['flush_gpu_rows']:.0f} GPU rows written"
                        if "flush_ms" in med
                        else ""
                    ),
                    flush=True,
                )
            continue
        runs = [
            one_run(args.database, args.pg_url, size, args.idle_passes) for _ in range(args.runs)
        ]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med["queued"] = size
        out.append(med)
        if not args.json:
            print(
                f"{size:>6} queued: "
                + "; ".join(
                    f"{label} {med[k + '_statements']:.0f} statements, "
                    f"{med[k + '_ms']:.1f} ms ({med[k + '_cpu_ms']:.1f} ms CPU)"
                    for label, k in (("placing", "place"), ("warm", "warm"), ("idle", "idle"))
                )
                + f"; placed {med['placed']:.0f} then {med['warm_placed']:.0f}",
                flush=True,
            )
    if args.json:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
