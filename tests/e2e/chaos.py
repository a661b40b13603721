"""A chaos run: a real coordinator and agents (simulated GPUs) running priced jobs while faults
are injected, then the books and the attempts are checked.

Faults, one per round: kill -9 of an agent (restarted on the same home), kill -9 of the
coordinator (restarted on the same database), SIGSTOP of an agent past its lease (then
SIGCONT), and a stalled coordinator (SIGSTOP for under a lease, then SIGCONT: every connection
to it stalls). Each job prints its own id; runs are counted from the attempts that ran to exit 0
(the coordinator records the exit code of every finish it receives, discarded duplicates
included), successes from the attempts that ended ``succeeded``.

Used by tests/e2e/test_chaos.py (a short run) and benchmarks/chaos.py (a long one).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from gpunet.store.db import Database
from gpunet.store.tables import Attempt, AttemptCharge, Job, JobEvent, Node
from tests.e2e.procs import Network, Proc, wait_for

FAULTS = ("kill9_agent", "kill9_coordinator", "sigstop_agent", "stall_coordinator")
PRICE = "3.6"
AGENT_FLAGS = ["--isolation", "none", "--accept-unisolated-jobs"]


@dataclass
class ChaosConfig:
    agents: int = 3
    gpus_per_agent: int = 2
    jobs: int = 30
    rounds: int = 8
    lease_timeout: float = 4.0
    job_seconds: tuple[float, float] = (1.0, 3.0)
    pause_s: tuple[float, float] = (1.0, 2.0)  # between rounds
    settle_timeout_s: float = 120.0
    seed: int = 1
    faults: tuple[str, ...] = FAULTS  # the kinds of fault injected, in shuffled cycles


@dataclass
class ChaosResult:
    database: str
    jobs: int
    rounds: dict[str, int]
    wall_s: float
    succeeded: int
    not_succeeded: list[str]  # jobs that did not end succeeded (lost work)
    double_successes: int  # jobs with more than one succeeded attempt
    ran_twice: int  # jobs with more than one attempt that ran to exit 0
    ran_twice_unexplained: int  # of those, not recorded as a discarded duplicate
    late_kept: int  # lost attempts whose late success was kept
    late_discarded: int  # ... recorded as discarded duplicates (the retry had started)
    attempts: int
    lost_attempts: int
    billed_s: int  # seconds billed, over every attempt that was billed
    measured_s: float  # seconds those attempts ran, as their agents measured
    worst_gap_s: float  # largest |billed - measured| of one attempt
    unmeasured_billed: int  # billed attempts without a measurement
    lost_charged: int  # lost attempts that were charged anything
    ledger_ok: bool
    ledger_output: str
    problems: list[str] = field(default_factory=list)
    # for each job run to exit 0 more than once: its attempts, events and the faults near them
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc(t: float | datetime | None) -> str | None:
    """A time as ISO 8601 UTC with milliseconds (store times are naive UTC)."""
    if t is None:
        return None
    d = _aware(t) if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    return d.isoformat(timespec="milliseconds")


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _sig(p: Proc, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.p.pid, sig)


class Chaos:
    def __init__(self, root: Path, db_url: str, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.net = Network(root, db_url, lease_timeout=cfg.lease_timeout)
        self.db_url = db_url
        self.job_ids: list[str] = []
        self.rounds: Counter[str] = Counter()
        self._stopped: set[str] = set()  # processes under SIGSTOP (names; "coordinator")
        # every fault injected: kind, target, and its start and end (UTC wall clock)
        self.timeline: list[dict[str, Any]] = []
        self.simulate = f"{cfg.gpus_per_agent}xA100-80GB"

    # ---- setup ------------------------------------------------------------------------
    def start(self) -> None:
        n = self.net
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        for i in range(self.cfg.agents):
            n.start_agent(f"a{i}", self.simulate, n.owner, extra=AGENT_FLAGS)
        n.user = n.token("consumer", "alice")
        n.wait_online(self.cfg.agents, timeout=60)
        for node in n.cli_json(n.admin, "nodes"):
            n.cli_json(n.owner, "price", "set", "--node", node["id"], PRICE)
        n.cli_json(n.admin, "credits", "grant", "--account", "alice", "100000")

    def _submit(self, i: int) -> None:
        lo, hi = self.cfg.job_seconds
        secs = round(self.rng.uniform(lo, hi), 2)
        body = {
            "name": f"chaos-{i}",
            "command": f"sleep {secs}; echo ran $GPUNET_JOB_ID",
            "max_retries": 50,  # faults cost retries; the work must never be given up
        }
        for _ in range(600):  # the coordinator may be down or stalled: keep trying
            try:
                r = httpx.post(
                    f"{self.net.url}/v1/jobs",
                    json=body,
                    headers={
                        "Authorization": f"Bearer {self.net.user}",
                        "Idempotency-Key": f"chaos-{i}",
                    },
                    timeout=5,
                )
                if r.status_code == 201:
                    self.job_ids.append(str(r.json()["id"]))
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"could not submit job {i}")

    def _trickle(self, stop: threading.Event) -> None:
        """Submit the jobs over the fault rounds, so faults always meet running work."""
        per_round = max(1, self.cfg.jobs // max(1, self.cfg.rounds))
        i = 0
        while i < self.cfg.jobs and not stop.is_set():
            for _ in range(per_round):
                if i < self.cfg.jobs:
                    self._submit(i)
                    i += 1
            stop.wait(1.0)
        while i < self.cfg.jobs:
            self._submit(i)
            i += 1

    # ---- faults -----------------------------------------------------------------------
    def _agent(self) -> str:
        return self.rng.choice(sorted(self.net.agents))

    def _restart_agent(self, name: str) -> None:
        old = self.net.agents[name]
        old._fh.close()
        self.net.start_agent(name, self.simulate, self.net.owner, extra=AGENT_FLAGS)

    def fault(self, kind: str) -> None:
        t0 = time.time()
        target = self._fault(kind)
        self.timeline.append(
            {"kind": kind, "target": target, "start": _utc(t0), "end": _utc(time.time())}
        )
        self.rounds[kind] += 1

    def _fault(self, kind: str) -> str:
        n, lease = self.net, self.cfg.lease_timeout
        name = "coordinator"
        if kind == "kill9_agent":
            name = self._agent()
            n.agents[name].kill9()
            time.sleep(self.rng.uniform(0.2, 1.0))
            self._restart_agent(name)
        elif kind == "kill9_coordinator":
            assert n.coordinator is not None
            n.coordinator.kill9()
            n.coordinator._fh.close()
            n.start_coordinator()
        elif kind == "sigstop_agent":
            name = self._agent()
            p = n.agents[name]
            self._stopped.add(name)
            _sig(p, signal.SIGSTOP)
            time.sleep(lease * self.rng.uniform(1.3, 1.8))  # past the lease: reaped
            _sig(p, signal.SIGCONT)
            self._stopped.discard(name)
        elif kind == "stall_coordinator":
            assert n.coordinator is not None
            self._stopped.add("coordinator")
            _sig(n.coordinator, signal.SIGSTOP)
            time.sleep(lease * self.rng.uniform(0.2, 0.4))  # connections hang meanwhile
            _sig(n.coordinator, signal.SIGCONT)
            self._stopped.discard("coordinator")
        return name

    def release(self) -> None:
        """SIGCONT whatever a failed run left stopped (SIGINT cannot reach it otherwise)."""
        for name in list(self._stopped):
            p = self.net.coordinator if name == "coordinator" else self.net.agents.get(name)
            if p is not None:
                _sig(p, signal.SIGCONT)
        self._stopped.clear()

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> ChaosResult:
        t0 = time.monotonic()
        stop = threading.Event()
        feeder = threading.Thread(target=self._trickle, args=(stop,), daemon=True)
        feeder.start()
        kinds = list(self.cfg.faults)
        for r in range(self.cfg.rounds):
            if r % len(kinds) == 0:
                self.rng.shuffle(kinds)
            time.sleep(self.rng.uniform(*self.cfg.pause_s))
            self.fault(kinds[r % len(kinds)])
        stop.set()
        feeder.join(timeout=300)
        assert not feeder.is_alive(), "the jobs could not all be submitted"
        assert len(self.job_ids) == self.cfg.jobs
        wait_for(self._all_done, self.cfg.settle_timeout_s, "every job to end", every=1.0)
        wall = time.monotonic() - t0
        return self.check(wall)

    def _all_done(self) -> bool:
        db = Database(self.db_url)
        try:
            with db.sessions() as s:
                states = s.scalars(select(Job.state).where(Job.id.in_(self.job_ids))).all()
        finally:
            db.engine.dispose()
        return len(states) == len(self.job_ids) and all(
            st in ("succeeded", "failed", "cancelled") for st in states
        )

    def check(self, wall_s: float) -> ChaosResult:
        db = Database(self.db_url)
        try:
            with db.sessions() as s:
                jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(self.job_ids)))}
                atts = list(s.scalars(select(Attempt).where(Attempt.job_id.in_(self.job_ids))))
                charges = {c.attempt_id: c for c in s.scalars(select(AttemptCharge))}
                events = list(s.scalars(select(JobEvent).where(JobEvent.job_id.in_(self.job_ids))))
                node_names = {n.id: n.name for n in s.scalars(select(Node))}
        finally:
            db.engine.dispose()
        by_job: dict[str, list[Attempt]] = defaultdict(list)
        for a in atts:
            by_job[a.job_id].append(a)
        discarded = {
            a.id for a in atts if a.state == "lost" and (a.reason or "").startswith("duplicate")
        }
        dup_events = [e for e in events if e.reason.startswith("duplicate discarded")]
        kept = [e for e in events if "its report arrived after its lease lapsed" in e.reason]
        ran_twice = unexplained = doubles = 0
        evidence: list[dict[str, Any]] = []
        for job_id in jobs:
            runs = [a for a in by_job[job_id] if a.exit_code == 0]
            wins = [a for a in runs if a.state == "succeeded"]
            doubles += len(wins) > 1
            if len(runs) > 1:
                ran_twice += 1
                evidence.append(
                    self._evidence(
                        jobs[job_id],
                        by_job[job_id],
                        [e for e in events if e.job_id == job_id],
                        node_names,
                    )
                )
                # every extra run must be a duplicate whose retry had already started
                unexplained += any(a.id not in discarded for a in runs if a not in wins)
        billed_s = 0
        measured = 0.0
        worst = 0.0
        unmeasured = lost_charged = 0
        problems: list[str] = []
        for a in atts:
            ch = charges.get(a.id)
            if ch is None:
                continue
            if ch.outcome == "lost":
                lost_charged += ch.charged > 0
                continue
            if ch.settled_at is None:
                problems.append(f"attempt {a.id} ({a.state}) is not settled")
                continue
            if a.runtime_s is None:
                if ch.billed_seconds:
                    unmeasured += 1
                continue
            billed_s += ch.billed_seconds
            measured += a.runtime_s
            gap = abs(ch.billed_seconds - a.runtime_s)
            worst = max(worst, gap)
        ledger = self.net.cli(self.net.admin, "ledger", "verify")
        out = (ledger.stdout + ledger.stderr).strip()
        return ChaosResult(
            database="postgres" if self.db_url.startswith("postgres") else "sqlite",
            jobs=len(self.job_ids),
            rounds=dict(self.rounds),
            wall_s=round(wall_s, 1),
            succeeded=sum(j.state == "succeeded" for j in jobs.values()),
            not_succeeded=[j.id for j in jobs.values() if j.state != "succeeded"],
            double_successes=doubles,
            ran_twice=ran_twice,
            ran_twice_unexplained=unexplained,
            late_kept=len(kept),
            late_discarded=len(dup_events),
            attempts=len(atts),
            lost_attempts=sum(a.state == "lost" for a in atts),
            billed_s=billed_s,
            measured_s=round(measured, 2),
            worst_gap_s=round(worst, 3),
            unmeasured_billed=unmeasured,
            lost_charged=lost_charged,
            ledger_ok=ledger.returncode == 0 and "ledger ok" in ledger.stdout,
            ledger_output=out[-500:],
            problems=problems,
            evidence=evidence,
        )

    def _evidence(
        self, job: Job, atts: list[Attempt], events: list[JobEvent], node_names: dict[str, str]
    ) -> dict[str, Any]:
        """What tells a job's double run apart: its attempts (node, state, times, exit code,
        token), its events, the faults from its first attempt's creation on, and every log
        line (agents, their watchdogs, the coordinator) that names one of its attempts."""
        atts = sorted(atts, key=lambda a: a.number)
        ids = [a.id for a in atts]
        first = min(_aware(a.created_at) for a in atts) - timedelta(seconds=10)
        last = max(_aware(a.finished_at or a.created_at) for a in atts)
        faults = [
            f
            for f in self.timeline
            if datetime.fromisoformat(f["end"]) >= first
            and datetime.fromisoformat(f["start"]) <= last
        ]
        lines: list[str] = []
        for log in sorted(self.net.root.glob("*.log")):
            try:
                text = log.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if any(i in line for i in ids):
                    lines.append(f"{log.stem}: {line[:400]}")
        return {
            "job": job.id,
            "command": job.spec.get("command") if isinstance(job.spec, dict) else None,
            "attempts": [
                {
                    "id": a.id,
                    "number": a.number,
                    "node": node_names.get(a.node_id, a.node_id),
                    "state": a.state,
                    "exit_code": a.exit_code,
                    "reason": a.reason,
                    "lost_cause": a.lost_cause,
                    "token": a.fencing_token,
                    "created": _utc(a.created_at),
                    "started": _utc(a.started_at),
                    "finished": _utc(a.finished_at),
                    "runtime_s": a.runtime_s,
                }
                for a in atts
            ],
            "events": [
                {"at": _utc(e.at), "to": e.to_state, "reason": e.reason, "actor": e.actor}
                for e in sorted(events, key=lambda e: (e.at, e.id))
            ],
            "faults": faults,
            "log_lines": lines[:80],
        }

    def close(self) -> None:
        self.release()
        self.net.close()


def run_chaos(root: Path, db_url: str, cfg: ChaosConfig) -> ChaosResult:
    """Start the network, run the rounds, check; always clean up (logs printed on failure)."""
    chaos = Chaos(root, db_url, cfg)
    try:
        chaos.start()
        return chaos.run()
    except BaseException:
        chaos.release()
        print(chaos.net.logs())
        raise
    finally:
        chaos.close()
