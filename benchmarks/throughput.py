"""Throughput benchmark: committed placements per second, end to end.

A placement is committed when its job was submitted through the API, its attempt was started
by an agent, finished, and billed (the finish report settles the attempt's charge in the same
transaction, so an accepted finish report is a billed job). A real coordinator (``gpunet
server``) runs on a free port on 127.0.0.1, on SQLite in a temporary directory or on a fresh
PostgreSQL database that is dropped afterwards. Two workloads:

* ``burst`` (the issue's workload): ``--jobs`` trivial one-GPU jobs (``true``) submitted at
  once to 8 GPUs; the figure is jobs / (time from the first submit to the last finish). With
  ``--agent real`` one real ``gpunet agent`` with 8 simulated GPUs runs each job as a process
  (no sandbox); with ``--agent sim`` an in-process simulated agent reports each attempt started
  and finished as soon as it gets it.
* ``steady``: ``--agents`` simulated agents x ``--gpus-per-agent`` GPUs; a closed-loop
  submitter keeps ``--depth`` jobs outstanding (submitted, not yet finished) and the figure is
  finished jobs per second over ``--duration`` seconds after a warm-up. Run it at several
  depths (``--depth 100,1000,10000``) to see whether throughput falls as the queue grows.

``burst --peers slurm`` measures Slurm side by side in the same run: each round runs gpunet,
then the same workload on a private one-node Slurm (``benchmarks/slurm_burst.py``) in each
``--slurm-config`` (its defaults, and the High Throughput guide's settings), submitted as one
``sbatch`` per job and as one job array (``--slurm-submit``), so every row sees the same machine
load; the report adds each row's median and the ratio gpunet / Slurm.

Simulated agents speak the agent protocol over a minimal keep-alive HTTP client (two
connections each: the long-poll and everything else), so the load generator's CPU stays small
next to the coordinator's on a 2-core machine. They report every attempt of one work answer
started and finished in one ``POST /v1/agent/reports`` when the coordinator has it
(``--reports auto``), else two requests per attempt (``--reports single``). Jobs are
submitted through ``POST /v1/jobs/batch`` when the coordinator has it (``--submit auto``),
else one ``POST /v1/jobs`` each (8 in flight). The coordinator's CPU, its scheduler passes
(count, seconds) and the work polls it answered are read from /proc and /metrics.

    python benchmarks/throughput.py burst --agent real --database sqlite --runs 3
    python benchmarks/throughput.py burst --agent real --runs 3 --peers slurm
    python benchmarks/throughput.py steady --agents 100 --depth 100,1000,10000 \\
        --database postgres --runs 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import slurm_burst
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent))

from control_plane import (  # noqa: E402
    Coordinator,
    CpuMeter,
    Profiler,
    RawConnection,
    _proc_cpu_s,
    db_version,
    gpunet_command,
    machine,
    pg_database,
)

from gpunet.store.tables import Attempt, Job  # noqa: E402
from gpunet.util import utc  # noqa: E402

JOB = {"command": "true", "resources": {"gpus": 1}}
BATCH_MAX = 1000  # jobs per batch request (the endpoint's own cap may be higher)


# ------------------------------------------------------------------ a minimal HTTP client


class Raw(RawConnection):
    """One keep-alive HTTP/1.1 connection that sends a JSON request and reads its answer."""

    def __init__(self, port: int, token: str = "") -> None:
        super().__init__(port)
        self.token = token
        # a simulated agent's heartbeats and reports share this connection: one exchange at
        # a time (two readers of one stream would read each other's answers, or raise)
        self.lock = asyncio.Lock()

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.lock:
            return await self._call(method, path, body)

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if self.token:
            head += f"Authorization: Bearer {self.token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        for attempt in range(2):  # a keep-alive connection the server closed: once more
            try:
                status, payload = await self.exchange(head.encode() + b"\r\n" + data)
            except (OSError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
                continue
            try:
                return status, json.loads(payload) if payload else None
            except ValueError:  # said in the run's errors (a 500's plain text, say)
                raise RuntimeError(f"HTTP {status}, not JSON: {payload[:60]!r}") from None
        raise AssertionError("unreachable")


# ------------------------------------------------------------------ simulated agents


@dataclass
class Agent:
    index: int
    gpus: int
    port: int
    node_id: str = ""
    poll: Raw | None = None
    rest: Raw | None = None
    seen: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)

    def registration(self) -> dict[str, Any]:
        return {
            "name": f"tp-{self.index:05d}",
            "agent_version": "bench",
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-tp-{self.index:05d}-{i}",
                    "name": "Simulated A100-80GB",
                    "model": "A100-80GB",
                    "memory_mb": 80000,
                    "compute_capability": "8.0",
                    "simulated": True,
                }
                for i in range(self.gpus)
            ],
            "accepts_unisolated": True,  # the jobs come from another account
        }


class Fleet:
    """Simulated agents that start and finish each attempt as soon as they get it."""

    def __init__(self, ports: list[int], n: int, gpus: int) -> None:
        # agent i talks to coordinator replica i mod N (docs/replicas.md: any replica serves)
        self.agents = [Agent(i, gpus, ports[i % len(ports)]) for i in range(n)]
        self.done = 0
        self.done_at: list[float] = []
        self.polls = 0
        self.duplicates = 0  # attempts an agent was sent again
        self.errors: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        self.batch_reports = False  # POST /v1/agent/reports, one request per answer

    async def detect_reports(self, mode: str) -> None:
        """``--reports auto``: batched when the coordinator has the endpoint."""
        if mode != "auto":
            self.batch_reports = mode == "batch"
            return
        a = self.agents[0]
        assert a.rest is not None
        status, _ = await a.rest.call("POST", "/v1/agent/reports", {})
        self.batch_reports = status == 200

    async def register(self, join: str) -> None:
        sem = asyncio.Semaphore(16)

        async def one(a: Agent) -> None:
            async with sem:
                c = Raw(a.port, join)
                status, body = await c.call("POST", "/v1/agent/register", a.registration())
                await c.close()
                if status != 201:
                    raise RuntimeError(f"register: HTTP {status} {body}")
                a.node_id = body["node_id"]
                a.poll, a.rest = Raw(a.port, body["token"]), Raw(a.port, body["token"])

        await asyncio.gather(*(one(a) for a in self.agents))

    def start(self) -> None:
        for a in self.agents:
            for loop in (self._poll_loop(a), self._heartbeat_loop(a)):
                task = asyncio.create_task(loop)
                task.add_done_callback(self._died)
                self.tasks.append(task)

    def _died(self, task: asyncio.Task[None]) -> None:
        """A simulated agent's loop that ended other than by stop(): counted, never silent
        (its node would stop polling or heartbeating and skew the figures)."""
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self.errors[f"agent loop died: {type(exc).__name__}: {str(exc)[:100]}"] += 1

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for a in self.agents:
            for c in (a.poll, a.rest):
                if c is not None:
                    await c.close()

    async def _heartbeat_loop(self, a: Agent) -> None:
        assert a.rest is not None
        await asyncio.sleep((a.index % 50) / 10)  # spread over 5 s
        while True:
            body = {"gpus": [{"index": i} for i in range(a.gpus)], "attempts": sorted(a.running)}
            try:
                status, _ = await a.rest.call("POST", "/v1/agent/heartbeat", body)
                if status != 200:
                    self.errors[f"heartbeat {status}"] += 1
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.errors[f"heartbeat {type(exc).__name__}"] += 1
            await asyncio.sleep(5.0)

    async def _poll_loop(self, a: Agent) -> None:
        assert a.poll is not None and a.rest is not None
        while True:
            # like the real agent: say which attempts this node already holds
            path = "/v1/agent/work?wait=20&have=" + ",".join(sorted(a.running))
            try:
                status, work = await a.poll.call("GET", path)
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.errors[f"work {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            self.polls += 1
            if status != 200:
                self.errors[f"work {status}"] += 1
                await asyncio.sleep(0.2)
                continue
            fresh = []
            for item in work.get("start", []):
                if item["attempt_id"] in a.seen:
                    self.duplicates += 1
                    continue
                a.seen.add(item["attempt_id"])
                a.running.add(item["attempt_id"])
                fresh.append(item)
            if fresh and self.batch_reports:
                await self._run_batch(a, fresh)
                continue
            for item in fresh:
                await self._run(a, item)

    async def _run_batch(self, a: Agent, items: list[dict[str, Any]]) -> None:
        """Every attempt of one answer reported started and finished in one request."""
        assert a.rest is not None
        ids = [(i["attempt_id"], i["fencing_token"]) for i in items]
        body = {
            "started": [{"attempt_id": att, "fencing_token": tok} for att, tok in ids],
            "finished": [
                {"attempt_id": att, "fencing_token": tok, "exit_code": 0, "runtime_s": 0.001}
                for att, tok in ids
            ],
        }
        try:
            status, answer = await a.rest.call("POST", "/v1/agent/reports", body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.errors[f"reports {type(exc).__name__}"] += 1
            return
        finally:
            a.running.difference_update(att for att, _ in ids)
        if status != 200:
            self.errors[f"reports {status}"] += 1
            return
        now = time.perf_counter()
        for r in answer["results"]:
            if r["status"] != 200:
                self.errors[f"{r['kind']} {r['status']}"] += 1
            elif r["kind"] == "finished":
                self.done += 1
                self.done_at.append(now)

    async def _run(self, a: Agent, item: dict[str, Any]) -> None:
        assert a.rest is not None
        att, tok = item["attempt_id"], item["fencing_token"]
        base = f"/v1/agent/attempts/{att}"
        try:
            status, _ = await a.rest.call("POST", f"{base}/started", {"fencing_token": tok})
            if status != 200:
                self.errors[f"started {status}"] += 1
            fin = {"fencing_token": tok, "exit_code": 0, "runtime_s": 0.001}
            status, _ = await a.rest.call("POST", f"{base}/finished", fin)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.errors[f"report {type(exc).__name__}"] += 1
            return
        finally:
            a.running.discard(att)
        if status == 200:
            self.done += 1
            self.done_at.append(time.perf_counter())
        else:
            self.errors[f"finished {status}"] += 1


# ------------------------------------------------------------------ submitting


class Submitter:
    """Submits job batches through the batch endpoint, or one request per job."""

    def __init__(self, port: int, token: str, mode: str) -> None:
        self.port, self.token, self.mode = port, token, mode
        self.conns = [Raw(port, token) for _ in range(8)]
        self.submitted = 0
        self.errors: Counter[str] = Counter()

    async def detect(self) -> None:
        if self.mode != "auto":
            return
        status, _ = await self.conns[0].call("POST", "/v1/jobs/batch", {"jobs": []})
        self.mode = "single" if status in (404, 405) else "batch"

    async def submit(self, n: int) -> None:
        if n <= 0:
            return
        if self.mode == "batch":
            left = n
            while left > 0:
                k = min(left, BATCH_MAX)
                status, body = await self.conns[0].call(
                    "POST", "/v1/jobs/batch", {"jobs": [JOB] * k}
                )
                if status != 201:
                    self.errors[f"batch {status}: {str(body)[:200]}"] += 1
                    await asyncio.sleep(0.1)
                    return
                self.submitted += k
                left -= k
            return
        queue = list(range(n))

        async def worker(c: Raw) -> None:
            while queue:
                queue.pop()
                status, body = await c.call("POST", "/v1/jobs", JOB)
                if status == 201:
                    self.submitted += 1
                else:
                    self.errors[f"submit {status}: {str(body)[:200]}"] += 1

        await asyncio.gather(*(worker(c) for c in self.conns))

    async def close(self) -> None:
        for c in self.conns:
            await c.close()


# ------------------------------------------------------------------ the coordinator's counters


def scrape(url: str, admin: str) -> dict[str, float]:
    """Scheduler passes and their seconds, work polls and items sent, from /metrics (slow on
    a saturated coordinator with 8,000 GPUs: the timeout is generous)."""
    text = httpx.get(
        f"{url}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=120
    ).text
    out: dict[str, float] = {}
    for name, key in (
        ("gpunet_scheduler_tick_seconds_count", "passes"),
        ("gpunet_scheduler_tick_seconds_sum", "pass_s"),
        ("gpunet_work_polls_total", "polls"),
    ):
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        if m:
            out[key] = float(m.group(1))
    for m in re.finditer(r'^gpunet_work_items_total\{kind="(\w+)"\} ([0-9.e+-]+)$', text, re.M):
        out[f"items_{m.group(1)}"] = float(m.group(2))
    report = r'^gpunet_agent_report_requests_total\{path="(\w+)"\} ([0-9.e+-]+)$'
    for m in re.finditer(report, text, re.M):
        out[f"report_requests_{m.group(1)}"] = float(m.group(2))
    return out


def report_requests_per_job(counters: dict[str, float], done: int) -> float | None:
    """Report requests (single and batched) the coordinator took per finished job."""
    n = sum(v for k, v in counters.items() if k.startswith("report_requests_"))
    return round(n / done, 2) if done else None


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a.get(k, 0.0), 3) for k in b}


async def tokens(url: str, admin: str) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as c:
        h = {"Authorization": f"Bearer {admin}"}
        out = []
        for role, account in (("provider", "tp-provider"), ("consumer", "tp-consumer")):
            r = await c.post("/v1/tokens", headers=h, json={"role": role, "account": account})
            out.append(str(r.raise_for_status().json()["token"]))
        return out[0], out[1]


# ------------------------------------------------------------------ workloads


async def burst(args: argparse.Namespace, db_url: str, workdir: Path) -> dict[str, Any]:
    coord = Coordinator(
        db_url, workdir, 30.0, ["--max-queued-jobs", str(args.jobs + 1000), *scheduler(args)]
    )
    fleet: Fleet | None = None
    agent: subprocess.Popen[bytes] | None = None
    try:
        admin = await asyncio.to_thread(coord.wait_ready)
        join, cons = await tokens(coord.url, admin)
        if args.agent == "sim":
            fleet = Fleet([coord.port], 1, 8)
            await fleet.register(join)
            await fleet.detect_reports(args.reports)
            fleet.start()
        else:
            agent = start_agent(coord.url, join, workdir)
            await wait_online(coord.url, admin, 1)
        sub = Submitter(coord.port, cons, args.submit)
        await sub.detect()
        await asyncio.sleep(1.0)
        before = scrape(coord.url, admin)
        meter = CpuMeter(coord.pid, pg_name(db_url))
        agent_cpu0 = _proc_cpu_s(agent.pid) if agent is not None else None
        async with profiled(args, coord.pid, workdir) as prof:
            meter.start()
            t0 = time.perf_counter()
            await sub.submit(args.jobs)
            submitted_s = time.perf_counter() - t0
            done = await wait_done(coord.url, cons, args.jobs, fleet, args.timeout)
            elapsed = time.perf_counter() - t0
            cpu = meter.stop()
        agent_cpu1 = _proc_cpu_s(agent.pid) if agent is not None else None
        if agent_cpu0 is not None and agent_cpu1 is not None:
            cpu["agent_cpu_pct"] = round(100 * (agent_cpu1 - agent_cpu0) / elapsed, 1)
        after = scrape(coord.url, admin)
        await sub.close()
        return {
            "jobs": args.jobs,
            "finished": done,
            "submit_mode": sub.mode,
            "scheduler": args.scheduler,
            "submit_s": round(submitted_s, 2),
            "submit_rate_per_s": round(args.jobs / submitted_s, 1),
            "elapsed_s": round(elapsed, 2),
            "jobs_per_s": round(done / elapsed, 1),
            "report_requests_per_job": report_requests_per_job(delta(before, after), done),
            "coordinator": delta(before, after),
            "errors": {**sub.errors, **(fleet.errors if fleet else {})},
            "duplicates": fleet.duplicates if fleet else None,
            "profile": prof.summary() if prof is not None else None,
            **cpu,
        }
    finally:
        if fleet is not None:
            await fleet.stop()
        if agent is not None:
            stop_proc(agent)
        coord.stop()


async def steady(
    args: argparse.Namespace, db_url: str, workdir: Path, depth: int
) -> dict[str, Any]:
    server_args = ["--max-queued-jobs", str(depth + BATCH_MAX * 2), *scheduler(args)]
    coord = Coordinator(db_url, workdir, 30.0, server_args)
    replicas = [coord]
    fleet: Fleet | None = None
    try:
        admin = await asyncio.to_thread(coord.wait_ready)
        for _ in range(args.replicas - 1):  # after the first: it migrated and made the admin
            replicas.append(Coordinator(db_url, workdir, 30.0, server_args))
            await asyncio.to_thread(replicas[-1].wait_ready)
        join, cons = await tokens(coord.url, admin)
        fleet = Fleet([c.port for c in replicas], args.agents, args.gpus_per_agent)
        await fleet.register(join)
        await fleet.detect_reports(args.reports)
        fleet.start()
        sub = Submitter(coord.port, cons, args.submit)
        await sub.detect()
        await asyncio.sleep(1.0)
        await sub.submit(depth)  # fill the queue first (agents work meanwhile)
        measure_from = time.perf_counter() + args.warmup
        stop = measure_from + args.duration
        marks: dict[str, Any] = {}
        meter = CpuMeter([c.pid for c in replicas], pg_name(db_url))
        async with profiled(args, coord.pid, workdir) as prof:
            while not marks or time.perf_counter() < stop:
                if not marks and time.perf_counter() >= measure_from:
                    # /metrics first, in a thread so the simulated agents keep running (a
                    # scrape of 8,000 GPUs' series takes seconds on a busy coordinator);
                    # the window's counts and CPU then start at the same moment
                    first = await asyncio.to_thread(scrape, coord.url, admin)
                    marks = {"done": fleet.done, "polls": fleet.polls, "metrics": first}
                    marks["t"], marks["wall"] = time.perf_counter(), time.time()
                    meter.start()
                    stop = marks["t"] + args.duration
                outstanding = sub.submitted - fleet.done
                if outstanding < depth:
                    chunk = BATCH_MAX if sub.mode == "batch" else 64
                    await sub.submit(min(depth - outstanding, chunk))
                else:
                    await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - marks["t"]
        cpu = meter.stop()
        done, polls = fleet.done - marks["done"], fleet.polls - marks["polls"]
        after = await asyncio.to_thread(scrape, coord.url, admin)
        await sub.close()
        return {
            "depth": depth,
            "agents": args.agents,
            "gpus": args.agents * args.gpus_per_agent,
            "submit_mode": sub.mode,
            "scheduler": args.scheduler,
            "replicas": args.replicas,
            "reports": "batch" if fleet.batch_reports else "single",
            "measured_s": round(elapsed, 2),
            "finished": done,
            "jobs_per_s": round(done / elapsed, 1),
            "polls_per_job": round(polls / done, 2) if done else None,
            # CPU per committed placement: steadier than jobs/s on a shared machine
            "server_cpu_ms_per_job": per_job(cpu.get("server_cpu_s"), done),
            "database_cpu_ms_per_job": per_job(cpu.get("database_cpu_s"), done),
            "coordinator": delta(marks["metrics"], after),
            "stages_ms": await asyncio.to_thread(stages, db_url, marks["wall"]),
            "duplicates": fleet.duplicates,
            "errors": {**sub.errors, **fleet.errors},
            "profile": prof.summary() if prof is not None else None,
            **cpu,
        }
    finally:
        if fleet is not None:
            await fleet.stop()
        for c in replicas:
            c.stop()
        for c in replicas:
            for line in server_errors(c.log_path):
                print(f"coordinator :{c.port}: {line}", file=sys.stderr)


def server_errors(log: Path, limit: int = 5) -> list[str]:
    """The distinct exceptions a coordinator's log shows (a request that failed with a 500
    among them), at most ``limit``: the log itself goes with the run's temporary folder."""
    seen: dict[str, None] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if re.match(r"^[\w.]+(Error|Exception)\b.*", line) and len(seen) < limit:
                seen[line[:200]] = None
    return list(seen)


def stages(db_url: str, since_s: float) -> dict[str, dict[str, float]]:
    """Where a job's time went, from the store (ms, p50 and p90 of the attempts that
    succeeded in the measured window): ``queued`` (submit to the pass that placed it),
    ``to_started`` (placed to its start report: the long-poll's wake-up and delivery, the
    agent's report) and ``to_finished`` (start to finish report)."""
    engine = sqlalchemy.create_engine(db_url)
    q = (
        sqlalchemy.select(
            Job.created_at, Attempt.created_at, Attempt.started_at, Attempt.finished_at
        )
        .join(Job, Job.id == Attempt.job_id)
        .where(
            Attempt.state == "succeeded",
            Attempt.finished_at >= datetime.fromtimestamp(since_s, UTC),
        )
    )
    try:
        with engine.connect() as c:
            rows = c.execute(q).all()
    finally:
        engine.dispose()
    spans: dict[str, list[float]] = {"queued": [], "to_started": [], "to_finished": []}
    for row in rows:
        submitted, placed, started, finished = (utc(t) for t in row)
        if submitted is None or placed is None or started is None or finished is None:
            continue
        for key, a, b in (
            ("queued", submitted, placed),
            ("to_started", placed, started),
            ("to_finished", started, finished),
        ):
            spans[key].append((b - a).total_seconds() * 1000)
    out = {}
    for key, xs in spans.items():
        if xs:
            xs.sort()
            out[key] = {"p50": round(xs[len(xs) // 2], 1), "p90": round(xs[len(xs) * 9 // 10], 1)}
    return out


def scheduler(args: argparse.Namespace) -> list[str]:
    """The coordinator's option for where its scheduler passes run (default: its own)."""
    return [] if args.scheduler == "auto" else [f"--scheduler-{args.scheduler}"]


def per_job(cpu_s: float | None, done: int) -> float | None:
    return round(1000 * cpu_s / done, 2) if cpu_s is not None and done else None


def pg_name(db_url: str) -> str:
    """The PostgreSQL database's name (its backends' CPU is counted), or "" for SQLite."""
    return "" if db_url.startswith("sqlite") else urlsplit(db_url).path.lstrip("/")


def profiled(args: argparse.Namespace, pid: int, workdir: Path) -> Any:
    """py-spy on the coordinator while the measured part runs, with ``--profile``."""
    if not args.profile and not args.profile_out:
        return contextlib.nullcontext()
    return KeptProfile(pid, workdir / "coordinator.prof", args.profile_out)


class KeptProfile(Profiler):
    """The profiler, its raw collapsed stacks also copied to ``--profile-out`` (a prefix:
    one file per run, for flame graphs or one's own reading)."""

    runs = 0

    def __init__(self, pid: int, out: Path, keep: str | None) -> None:
        super().__init__(pid, out)
        self.keep = keep

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self.keep and self.out.exists():
            KeptProfile.runs += 1
            shutil.copy(self.out, f"{self.keep}.{KeptProfile.runs}.txt")


def start_agent(url: str, join: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    log = (workdir / "agent.log").open("wb")
    cmd = [
        *gpunet_command(),
        "agent",
        "--coordinator",
        url,
        "--join-token",
        join,
        "--simulate",
        "8xA100-80GB",
        "--name",
        "tp-real",
        "--home",
        str(workdir / "agent"),
        "--containers",
        "off",
        "--isolation",
        "none",
        "--accept-unisolated-jobs",
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_proc(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


async def wait_online(url: str, admin: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as c:
        while time.monotonic() < deadline:
            r = await c.get("/v1/nodes", headers={"Authorization": f"Bearer {admin}"})
            if r.status_code == 200 and sum(x["status"] == "online" for x in r.json()) >= n:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{n} agent(s) not online after {timeout:g}s")


async def wait_done(url: str, token: str, n: int, fleet: Fleet | None, timeout: float) -> int:
    """Wait until ``n`` jobs have finished; answer how many did."""
    deadline = time.perf_counter() + timeout
    if fleet is not None:
        while fleet.done < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        return fleet.done
    c = Raw(int(url.rsplit(":", 1)[1]), token)
    try:
        # cheap to ask: is any job still queued, assigned or running?
        while time.perf_counter() < deadline:
            left = 0
            for state in ("queued", "assigned", "running"):
                status, body = await c.call("GET", f"/v1/jobs?state={state}&limit=1")
                left += len(body) if status == 200 and isinstance(body, list) else 1
            if not left:
                break
            await asyncio.sleep(0.05)
        status, body = await c.call("GET", f"/v1/jobs?state=succeeded&limit={min(n, 1000)}")
        return len(body) if status == 200 and isinstance(body, list) else 0
    finally:
        await c.close()


# ------------------------------------------------------------------ runs and report


def with_database(args: argparse.Namespace, fn: Any) -> tuple[dict[str, Any], str]:
    workdir = Path(tempfile.mkdtemp(prefix="gpunet-tp-"))
    try:
        if args.database == "sqlite":
            url = f"sqlite:///{workdir / 'gpunet.db'}"
            return asyncio.run(fn(url, workdir)), db_version(url)
        with pg_database(args.pg_url) as url:
            return asyncio.run(fn(url, workdir)), db_version(url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def median(xs: list[Any]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 1) if vals else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=("burst", "steady"))
    p.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "GPUNET_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument("--runs", type=int, default=1, help="fresh coordinator and store each run")
    p.add_argument("--submit", choices=("auto", "batch", "single"), default="auto")
    p.add_argument("--agent", choices=("real", "sim"), default="real", help="burst: the agent")
    p.add_argument(
        "--reports",
        choices=("auto", "batch", "single"),
        default="auto",
        help="simulated agents: one POST /v1/agent/reports per answer, or a request per report",
    )
    p.add_argument(
        "--scheduler",
        choices=("auto", "process", "thread"),
        default="auto",
        help="where the coordinator runs its passes (gpunet server --scheduler-process/-thread)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="steady: coordinator replicas on one PostgreSQL database (agent i talks to "
        "replica i mod N; jobs are submitted to the first)",
    )
    p.add_argument("--jobs", type=int, default=500, help="burst: jobs submitted at once")
    p.add_argument("--timeout", type=float, default=300.0, help="burst: give up after")
    p.add_argument("--agents", type=int, default=100, help="steady: simulated agents")
    p.add_argument("--gpus-per-agent", type=int, default=8)
    p.add_argument("--depth", default="100,1000,10000", help="steady: jobs kept outstanding")
    p.add_argument("--warmup", type=float, default=5.0, help="steady: seconds not measured")
    p.add_argument("--duration", type=float, default=20.0, help="steady: seconds measured")
    p.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    p.add_argument("--profile", action="store_true", help="sample the coordinator (py-spy)")
    p.add_argument(
        "--profile-out", help="keep py-spy's raw stacks as PREFIX.N.txt (implies --profile)"
    )
    p.add_argument(
        "--peers", choices=("slurm",), help="burst: also run a peer each round, side by side"
    )
    p.add_argument(
        "--slurm-config",
        default=",".join(slurm_burst.MEASURED),
        help="--peers slurm: its configurations (default, high-throughput)",
    )
    p.add_argument(
        "--slurm-submit",
        default=",".join(slurm_burst.SUBMITS),
        help="--peers slurm: sbatch (one per job, 8 in parallel), array (one job array)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.replicas > 1 and (args.database != "postgres" or args.workload != "steady"):
        p.error("--replicas above 1 needs steady and --database postgres (SQLite: one coordinator)")
    peer_rows: list[tuple[str, str]] = []
    if args.peers:
        if args.workload != "burst":
            p.error("--peers: burst only")
        configs, submits = args.slurm_config.split(","), args.slurm_submit.split(",")
        unknown = [c for c in configs if c not in slurm_burst.CONFIGS]
        unknown += [s for s in submits if s not in slurm_burst.SUBMITS]
        if unknown:
            p.error(f"unknown: {', '.join(unknown)}")
        if slurm_burst.missing_programs():
            print(slurm_burst.install_hint(), file=sys.stderr)
            sys.exit(2)
        peer_rows = [(c, s) for c in configs for s in submits]
    if args.quick:
        args.jobs, args.agents, args.depth = min(args.jobs, 100), min(args.agents, 10), "50"
        args.warmup, args.duration = 2.0, 5.0
    with contextlib.suppress(OSError, ValueError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 6 * args.agents + 1024), hard))

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # the same cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, _terminate)
    results: list[dict[str, Any]] = []
    peer_runs: dict[tuple[str, str], list[dict[str, Any]]] = {row: [] for row in peer_rows}
    load = [load_avg()]
    version = ""
    cases: list[int | None] = (
        [None] if args.workload == "burst" else [int(d) for d in args.depth.split(",")]
    )
    for depth in cases:
        runs = []
        for i in range(args.runs):
            if depth is None:
                r, version = with_database(args, lambda u, w: burst(args, u, w))
            else:
                r, version = with_database(args, lambda u, w, d=depth: steady(args, u, w, d))
            runs.append(r)
            label = "burst" if depth is None else f"depth {depth}"
            print(
                f"{label} run {i + 1}/{args.runs}: {r['jobs_per_s']} jobs/s "
                f"(coordinator CPU {r['server_cpu_pct']}%, agent CPU {r.get('agent_cpu_pct')}%, "
                f"{r['coordinator']}, "
                f"errors {r['errors']})",
                file=sys.stderr,
            )
            for config, submit in peer_rows:  # the same round: the same machine load
                pr = slurm_burst.run_once(config, submit, args.jobs, timeout=args.timeout)
                peer_runs[config, submit].append(pr)
                print(
                    f"{label} run {i + 1}/{args.runs}: {slurm_burst.one_line(pr)}", file=sys.stderr
                )
        results.append(
            {
                "depth": depth,
                "median_jobs_per_s": median([r["jobs_per_s"] for r in runs]),
                "median_server_cpu_pct": median([r["server_cpu_pct"] for r in runs]),
                "median_report_requests_per_job": median(
                    [r.get("report_requests_per_job") for r in runs]
                ),
                "runs": runs,
            }
        )
    out = {
        "benchmark": "throughput",
        "workload": args.workload,
        "date": date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
        "machine": machine(),
        "database": args.database,
        "database_version": version,
        "results": results,
    }
    if peer_rows:
        load.append(load_avg())
        out["peers"] = peers_report(results[0]["median_jobs_per_s"], peer_runs)
        out["slurm"] = slurm_burst.slurm_version()
        out["load_avg_1_5_15"] = {"start": load[0], "end": load[1]}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"gpunet throughput ({args.workload}), {out['date']}, {version}")
    for res in results:
        label = "burst" if res["depth"] is None else f"depth {res['depth']:>6}"
        print(
            f"  {label}: median {res['median_jobs_per_s']} committed placements/s "
            f"(runs: {', '.join(str(r['jobs_per_s']) for r in res['runs'])}); coordinator CPU "
            f"{res['median_server_cpu_pct']}%; report requests per job "
            f"{res['median_report_requests_per_job']}"
        )
    if peer_rows:
        print(f"  side by side, {out['slurm']}:")
        for row in out["peers"]:
            print(
                f"  {row['label']}: median {row['median_jobs_per_s']} jobs/s "
                f"(runs: {row['runs_line']}); gpunet / Slurm {row['ratio']}"
            )
        start, end = out["load_avg_1_5_15"]["start"], out["load_avg_1_5_15"]["end"]
        print(f"  load average (1, 5, 15 min): start {start}, end {end}")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peers_report(
    gpunet_median: float | None, runs: dict[tuple[str, str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Each Slurm row's medians and the ratio gpunet / Slurm (jobs per second)."""
    out = []
    for row_runs in runs.values():
        row = slurm_burst.summary(row_runs)
        slurm = row["median_jobs_per_s"]
        row["ratio"] = round(gpunet_median / slurm, 1) if gpunet_median and slurm else None
        out.append(row)
    return out


if __name__ == "__main__":
    main()
