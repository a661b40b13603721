"""Control-plane benchmark: a real coordinator against N simulated agents.

Starts ``gpunet server`` on a free port on 127.0.0.1 (SQLite in a temporary directory, or a
fresh PostgreSQL database that is dropped afterwards), then simulates N agents in this process
(asyncio + httpx; no subprocess per agent). Each agent registers, heartbeats and long-polls for
work like the real agent does. Two phases are measured:

* latency: jobs are submitted at a steady rate while every agent heartbeats at a realistic
  interval; the figure is the time from just before ``POST /v1/jobs`` to the moment an agent's
  long-poll returns the attempt (p50, p99, max);
* heartbeat ceiling: every agent sends heartbeats back to back, as fast as the coordinator
  answers them; the figure is accepted heartbeats per second over the phase.

With ``--replicas N`` (PostgreSQL), N coordinators share the database (docs/replicas.md): the
agents are spread over them (agent k talks to replica k mod N), jobs are submitted to them in
turn, and the CPU figures are the replicas' sum.

The coordinator's and this process's CPU use are sampled during each phase (from /proc) so the
report can say which side was saturated; ``--profile`` adds a py-spy sample of the coordinator
during an extra heartbeat phase (needs ``py-spy``).

    python benchmarks/control_plane.py --agents 200 --database sqlite
    python benchmarks/control_plane.py --agents 200 --database postgres \\
        --pg-url postgresql://postgres@127.0.0.1:5432/postgres --runs 3 --json
    python benchmarks/control_plane.py --agents 200 --database postgres --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

TARGET_P50_MS = 100.0
TARGET_P99_MS = 1000.0
TARGET_HB_PER_S = 2000.0
JOB_BODY = {"command": "true", "resources": {"gpus": 1}}


# ------------------------------------------------------------------ machine and CPU accounting


def machine() -> dict[str, Any]:
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "arch": platform.machine(),
        "cpu_model": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), children excluded."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process and of its children, living (the coordinator's scheduler
    process) or reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return None
    return own + sum(_tree_cpu_s(int(k)) or 0.0 for k in kids)


def _db_backends(db_name: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving ``db_name`` on this machine (its
    process title names the database), so the database's own cost can be told apart."""
    out: dict[int, float] = {}
    if not db_name:
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            if title.startswith(b"postgres:") and f" {db_name} ".encode() in title + b" ":
                cpu = _proc_cpu_s(int(entry))
                if cpu is not None:
                    out[int(entry)] = cpu
    return out


def _machine_busy() -> tuple[float, float] | None:
    """(busy jiffies, total jiffies) over all cores, from /proc/stat."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return float(sum(vals) - idle), float(sum(vals))


class CpuMeter:
    """CPU used by the coordinator (with its child processes) and by this load generator
    between start() and stop(), as a percentage of one core; and the whole machine's busy
    share."""

    def __init__(self, server_pid: int | list[int], db_name: str = "") -> None:
        self.server_pids = server_pid if isinstance(server_pid, list) else [server_pid]
        self.db_name = db_name  # PostgreSQL: also count its backends for this database

    def _srv(self) -> float | None:
        times = [_tree_cpu_s(p) for p in self.server_pids]
        return None if any(t is None for t in times) else sum(t or 0.0 for t in times)

    def start(self) -> None:
        self.t = time.perf_counter()
        self.srv = self._srv()
        self.db = _db_backends(self.db_name)
        self.me = time.process_time()
        self.mach = _machine_busy()

    def stop(self) -> dict[str, float | None]:
        dt = time.perf_counter() - self.t
        srv = self._srv()
        db = _db_backends(self.db_name)
        mach = _machine_busy()
        out: dict[str, float | None] = {
            "server_cpu_pct": None
            if srv is None or self.srv is None
            else round(100 * (srv - self.srv) / dt, 1),
            "loadgen_cpu_pct": round(100 * (time.process_time() - self.me) / dt, 1),
            "server_cpu_s": None if srv is None or self.srv is None else round(srv - self.srv, 3),
            "database_cpu_s": round(sum(c - self.db.get(p, 0.0) for p, c in db.items()), 3)
            if self.db_name
            else None,
            "phase_s": round(dt, 2),
            "machine_busy_pct": None,
            "other_cpu_pct": None,
        }
        if mach and self.mach and mach[1] > self.mach[1]:
            busy = (mach[0] - self.mach[0]) / (mach[1] - self.mach[1])
            out["machine_busy_pct"] = round(100 * busy, 1)
            # anything else running on the machine meanwhile, in % of one core
            own = (out["server_cpu_pct"] or 0.0) + (out["loadgen_cpu_pct"] or 0.0)
            out["other_cpu_pct"] = round(max(0.0, 100 * busy * (os.cpu_count() or 1) - own), 1)
        return out


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summary_ms(values_s: list[float]) -> dict[str, float | int | None]:
    ms = [v * 1000 for v in values_s]
    r = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {
        "count": len(ms),
        "p50_ms": r(pct(ms, 50)),
        "p99_ms": r(pct(ms, 99)),
        "max_ms": r(max(ms) if ms else None),
    }


# ------------------------------------------------------------------ the coordinator process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gpunet_command() -> list[str]:
    script = Path(sys.executable).with_name("gpunet")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from gpunet.cli.main import main; main()"]


@contextlib.contextmanager
def pg_database(server_url: str) -> Iterator[str]:
    """A fresh, uniquely named database on the PostgreSQL server; dropped afterwards."""
    import psycopg

    name = f"gpunet_bench_{secrets.token_hex(4)}"
    plain = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True, connect_timeout=10) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(plain)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(plain, autocommit=True, connect_timeout=10) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_version(db_url: str) -> str:
    if db_url.startswith("sqlite"):
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    import psycopg

    with psycopg.connect(db_url, connect_timeout=10) as c:
        row = c.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


class Coordinator:
    """``gpunet server`` as a child process, in its own session so Ctrl-C reaches us first."""

    def __init__(
        self, db_url: str, home: Path, lease_timeout: float, extra: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.log_path = home / f"server-{self.port}.log"
        self.log = self.log_path.open("wb")
        env = {**os.environ, "GPUNET_HOME": str(home)}
        cmd = [
            *gpunet_command(),
            "server",
            "--database-url",
            db_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lease-timeout",
            f"{lease_timeout:g}",
            *(extra or []),
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait for /healthz; answer the admin token the server wrote on first start."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"coordinator exited ({self.proc.returncode}):\n" + self.tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(f"{self.url}/healthz").status_code == 200:
                        return (self.home / "admin-token").read_text().strip()
                time.sleep(0.1)
        raise RuntimeError(f"coordinator not ready after {timeout:g}s:\n" + self.tail())

    def tail(self, n: int = 30) -> str:
        self.log.flush()
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log.close()


# ------------------------------------------------------------------ simulated agents


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client for one fixed request. Used to send heartbeats
    back to back at the ceiling, where httpx's own CPU cost (it shares the cores with the
    coordinator) would otherwise dominate the measurement."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        return (await self.exchange(raw))[0]

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        """Send one raw request; answer its status and body."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


@dataclass
class SimAgent:
    index: int
    gpus: int
    url: str = ""  # the replica it talks to
    node_id: str = ""
    token: str = ""
    running: dict[str, int] = field(default_factory=dict)  # attempt id -> fencing token
    seen: set[str] = field(default_factory=set)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def registration(self) -> dict[str, Any]:
        return {
            "name": f"bench-{self.index:04d}",
            "agent_version": "bench",
            "gpus": [
                {
                    "index": i,
                    "uuid": f"GPU-bench-{self.index:04d}-{i}",
                    "name": "Simulated A100-80GB",
                    "model": "A100-80GB",
                    "memory_mb": 80000,
                    "compute_capability": "8.0",
                    "simulated": True,
                }
                for i in range(self.gpus)
            ],
            # benchmark jobs come from another account: the owner accepts them unisolated
            "accepts_unisolated": True,
        }

    def heartbeat(self) -> dict[str, Any]:
        busy = {i for i in range(self.gpus)} if self.running else set()
        return {
            "gpus": [
                {
                    "index": i,
                    "utilization_pct": 97.0 if i in busy else 0.0,
                    "memory_used_mb": 60000 if i in busy else 0,
                    "temperature_c": 45.0 + (self.index + i) % 20,
                    "power_w": 120.0,
                }
                for i in range(self.gpus)
            ],
            "attempts": list(self.running),
        }

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def raw_heartbeat(self, port: int) -> bytes:
        body = json.dumps(self.heartbeat(), separators=(",", ":")).encode()
        return (
            f"POST /v1/agent/heartbeat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body


class Fleet:
    """N simulated agents sharing two httpx clients (long-polls; everything else)."""

    def __init__(self, urls: list[str], n: int, gpus: int, job_runtime_s: float) -> None:
        self.urls = urls
        self.agents = [SimAgent(i, gpus, urls[i % len(urls)]) for i in range(n)]
        limits = httpx.Limits(max_connections=n + 16, max_keepalive_connections=n + 16)
        self.poll_http = httpx.AsyncClient(limits=limits, timeout=40.0)
        self.http = httpx.AsyncClient(limits=limits, timeout=30.0)
        self.job_runtime_s = job_runtime_s
        self.received: dict[str, float] = {}  # job id -> perf_counter when an agent got it
        self.errors: Counter[str] = Counter()
        self.hb_interval_s = 5.0
        self.hb_latencies: list[float] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()
        self.pause_heartbeats = asyncio.Event()

    async def register(self, join_token: str, concurrency: int = 16) -> float:
        sem = asyncio.Semaphore(concurrency)

        async def one(a: SimAgent) -> None:
            async with sem:
                r = await self.http.post(
                    a.url + "/v1/agent/register",
                    json=a.registration(),
                    headers={"Authorization": f"Bearer {join_token}"},
                )
                r.raise_for_status()
                body = r.json()
                a.node_id, a.token = body["node_id"], body["token"]

        t = time.perf_counter()
        await asyncio.gather(*(one(a) for a in self.agents))
        return time.perf_counter() - t

    def start(self) -> None:
        for a in self.agents:
            self.tasks.append(asyncio.create_task(self._poll_loop(a)))
            self.tasks.append(asyncio.create_task(self._heartbeat_loop(a)))

    async def stop(self) -> None:
        self.stopping.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.poll_http.aclose()
        await self.http.aclose()

    async def _heartbeat_loop(self, a: SimAgent) -> None:
        await asyncio.sleep(random.random() * self.hb_interval_s)  # spread the fleet out
        while True:
            if not self.pause_heartbeats.is_set():
                t = time.perf_counter()
                try:
                    r = await self.http.post(
                        a.url + "/v1/agent/heartbeat", json=a.heartbeat(), headers=a.headers()
                    )
                    if r.status_code == 200:
                        self.hb_latencies.append(time.perf_counter() - t)
                    else:
                        self.errors[f"heartbeat {r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    self.errors[f"heartbeat {type(exc).__name__}"] += 1
            await asyncio.sleep(self.hb_interval_s)

    async def _poll_loop(self, a: SimAgent) -> None:
        while True:
            try:
                r = await self.poll_http.get(
                    a.url + "/v1/agent/work", params={"wait": 20}, headers=a.headers()
                )
            except httpx.HTTPError as exc:
                self.errors[f"work {type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            got = time.perf_counter()
            if r.status_code != 200:
                self.errors[f"work {r.status_code}"] += 1
                await asyncio.sleep(0.2)
                continue
            work = r.json()
            for info in work.get("start", []):
                if info["attempt_id"] in a.seen:
                    continue
                a.seen.add(info["attempt_id"])
                self.received.setdefault(info["job_id"], got)
                # report "started" before polling again, as the server keeps answering an
                # assigned attempt until it is started
                await self._report(
                    a, info["attempt_id"], "started", {"fencing_token": info["fencing_token"]}
                )
                a.running[info["attempt_id"]] = info["fencing_token"]
                self.tasks.append(asyncio.create_task(self._finish_later(a, info)))

    async def _report(self, a: SimAgent, attempt_id: str, what: str, body: dict[str, Any]) -> None:
        try:
            r = await self.http.post(
                f"{a.url}/v1/agent/attempts/{attempt_id}/{what}", json=body, headers=a.headers()
            )
            if r.status_code != 200:
                self.errors[f"{what} {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            self.errors[f"{what} {type(exc).__name__}"] += 1

    async def _finish_later(self, a: SimAgent, info: dict[str, Any]) -> None:
        await asyncio.sleep(self.job_runtime_s)
        await self._report(
            a,
            info["attempt_id"],
            "finished",
            {"fencing_token": info["fencing_token"], "exit_code": 0},
        )
        a.running.pop(info["attempt_id"], None)


# ------------------------------------------------------------------ phases


async def latency_phase(
    fleet: Fleet, consumer: str, jobs: int, rate: float, meter: CpuMeter
) -> dict[str, Any]:
    """Submit ``jobs`` at ``rate``/s (open loop) while agents heartbeat at their interval."""
    submitted: dict[str, float] = {}
    submit_s: list[float] = []
    errors: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {consumer}"}
    fleet.hb_latencies.clear()

    async def submit(i: int) -> None:
        t0 = time.perf_counter()
        url = fleet.urls[i % len(fleet.urls)]  # replicas in turn
        try:
            r = await fleet.http.post(url + "/v1/jobs", json=JOB_BODY, headers=headers)
        except httpx.HTTPError as exc:
            errors[f"submit {type(exc).__name__}"] += 1
            return
        if r.status_code != 201:
            errors[f"submit {r.status_code}"] += 1
            return
        submit_s.append(time.perf_counter() - t0)
        submitted[r.json()["id"]] = t0

    meter.start()
    start = time.perf_counter()
    pending = []
    for i in range(jobs):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(submit(i)))
    await asyncio.gather(*pending)
    deadline = time.perf_counter() + 30.0
    while time.perf_counter() < deadline and any(j not in fleet.received for j in submitted):
        await asyncio.sleep(0.05)
    cpu = meter.stop()
    lat = [fleet.received[j] - t0 for j, t0 in submitted.items() if j in fleet.received]
    return {
        "jobs": jobs,
        "submit_rate_per_s": rate,
        "submitted": len(submitted),
        "assigned": len(lat),
        "missing": len(submitted) - len(lat),
        "submit_to_assignment": summary_ms(lat),
        "submit_request": summary_ms(submit_s),
        "heartbeat_request": summary_ms(list(fleet.hb_latencies)),
        "errors": dict(errors),
        **cpu,
    }


async def heartbeat_phase(
    fleet: Fleet, duration: float, meter: CpuMeter, client: str
) -> dict[str, Any]:
    """Every agent heartbeats back to back for ``duration`` seconds."""
    fleet.pause_heartbeats.set()  # the interval loops stand aside; these replace them
    ok = 0
    errors: Counter[str] = Counter()
    lat: list[float] = []
    end = 0.0

    async def blast(a: SimAgent) -> None:
        nonlocal ok
        conn = RawConnection(a.port) if client == "raw" else None
        raw = a.raw_heartbeat(a.port)
        body = a.heartbeat()
        try:
            while True:
                t = time.perf_counter()
                if t >= end:
                    return
                try:
                    if conn is not None:
                        status = await conn.request(raw)
                    else:
                        status = (
                            await fleet.http.post(
                                a.url + "/v1/agent/heartbeat", json=body, headers=a.headers()
                            )
                        ).status_code
                except (OSError, asyncio.IncompleteReadError, httpx.HTTPError) as exc:
                    errors[type(exc).__name__] += 1
                    if conn is not None:
                        await conn.close()
                    await asyncio.sleep(0.05)
                    continue
                done = time.perf_counter()
                if done > end:
                    return
                if status == 200:
                    ok += 1
                    lat.append(done - t)
                else:
                    errors[f"HTTP {status}"] += 1
        finally:
            if conn is not None:
                await conn.close()

    meter.start()
    t0 = time.perf_counter()
    end = t0 + duration
    await asyncio.gather(*(blast(a) for a in fleet.agents))
    elapsed = time.perf_counter() - t0
    cpu = meter.stop()
    fleet.pause_heartbeats.clear()
    srv_cpu_s = (cpu["server_cpu_pct"] or 0.0) / 100 * elapsed
    return {
        "duration_s": round(elapsed, 2),
        "accepted": ok,
        "heartbeats_per_s": round(ok / elapsed, 1),
        "client": client,
        "heartbeats_per_server_cpu_s": round(ok / srv_cpu_s, 1) if srv_cpu_s else None,
        "in_flight": len(fleet.agents),
        "heartbeat_request": summary_ms(lat),
        "errors": dict(errors),
        **cpu,
    }


WATCHED = {
    "heartbeat",
    "work",
    "_principal",
    "flush_telemetry",
    "tick",
    "reap",
    "work_for",
    "authenticate",
    "renew",
    "submit",
    "started",
    "finished",
    "fleet_snapshot",
    "never_fits",
    "plan",
    "busy_gpu_ids",
    "attempt_started",
    "attempt_finished",
    "check_reported",
    "_queued_since",
    "requests",
    "holders",
    "account_views",
}


def profile_summary(raw: str, top: int = 16) -> dict[str, Any]:
    """Aggregate py-spy's collapsed stacks: where the coordinator's samples were spent."""
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [f for f in stack.split(";")[1:]]  # first entry is the thread
        if frames:
            own[frames[-1]] += count
        for a in {_area(f) for f in frames}:
            incl[a] += count
        for f in {f.split(" (", 1)[0] for f in frames}:
            if f.split(".")[-1] in WATCHED:
                fn[f] += count
    share = lambda c: round(100 * c / total, 1) if total else 0.0  # noqa: E731
    areas = (
        "sqlalchemy",
        "psycopg",
        "sqlite3",
        "pydantic",
        "fastapi",
        "starlette",
        "uvicorn",
        "httptools",
        "json",
        "gpunet",
        "asyncio",
        "threading",
    )
    return {
        "samples": total,
        "note": "samples of the thread holding the GIL (py-spy --gil)",
        "self_top": [{"frame": f, "pct": share(c)} for f, c in own.most_common(top)],
        "inclusive_pct": {f: share(c) for f, c in fn.most_common(top)},
        "inclusive_by_package_pct": {a: share(incl[a]) for a in areas if incl[a]},
    }


def _area(frame: str) -> str:
    # frames look like "func (path/to/module.py:123)"
    path = "/" + frame.rsplit("(", 1)[-1]
    for a in (
        "sqlalchemy",
        "psycopg",
        "sqlite3",
        "pydantic",
        "fastapi",
        "starlette",
        "uvicorn",
        "httptools",
        "gpunet",
        "asyncio",
        "threading",
        "json",
    ):
        if f"/{a}/" in path or f"/{a}." in path:
            return a
    return "other"


class Profiler:
    """py-spy sampling the coordinator (only the thread holding the GIL) while a phase runs."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: asyncio.subprocess.Process | None = None
        self.error = ""

    async def __aenter__(self) -> Profiler:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            self.error = "py-spy not found (pip install py-spy)"
            return self
        self.proc = await asyncio.create_subprocess_exec(
            spy,
            "record",
            "--pid",
            str(self.pid),
            "--duration",
            "600",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(self.out),
            "--nonblocking",
            "--gil",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), timeout=20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            err = b""
        if not self.out.exists():
            self.error = f"py-spy failed: {err.decode(errors='replace')[-300:]}"

    def summary(self) -> dict[str, Any]:
        return {"error": self.error} if self.error else profile_summary(self.out.read_text())


# ------------------------------------------------------------------ one run


async def run_once(args: argparse.Namespace, db_url: str, workdir: Path) -> dict[str, Any]:
    coord = Coordinator(db_url, workdir, args.lease_timeout)
    others: list[Coordinator] = []
    fleet: Fleet | None = None
    try:
        admin = await asyncio.to_thread(coord.wait_ready)
        for _ in range(args.replicas - 1):  # after the first: it migrated and made the admin
            others.append(Coordinator(db_url, workdir, args.lease_timeout))
            await asyncio.to_thread(others[-1].wait_ready)
        async with httpx.AsyncClient(base_url=coord.url, timeout=30.0) as c:
            h = {"Authorization": f"Bearer {admin}"}

            async def token(role: str, account: str) -> dict[str, Any]:
                r = await c.post("/v1/tokens", headers=h, json={"role": role, "account": account})
                out: dict[str, Any] = r.raise_for_status().json()
                return out

            join = await token("provider", "bench-provider")
            cons = await token("consumer", "bench-consumer")
        replicas = [coord, *others]
        fleet = Fleet([c.url for c in replicas], args.agents, args.gpus_per_agent, args.job_runtime)
        fleet.hb_interval_s = args.heartbeat_interval
        reg_s = await fleet.register(join["token"])
        fleet.start()
        await asyncio.sleep(min(2.0, args.heartbeat_interval))  # long-polls parked
        db_name = "" if db_url.startswith("sqlite") else urlsplit(db_url).path.lstrip("/")
        meter = CpuMeter([c.pid for c in replicas], db_name)
        prof: dict[str, Any] | None = None
        async with (
            Profiler(coord.pid, workdir / "latency.prof")
            if args.profile
            else contextlib.nullcontext()
        ) as p1:
            lat = await latency_phase(fleet, cons["token"], args.jobs, args.submit_rate, meter)
        await asyncio.sleep(1.0)
        async with (
            Profiler(coord.pid, workdir / "heartbeat.prof")
            if args.profile
            else contextlib.nullcontext()
        ) as p2:
            hb = await heartbeat_phase(fleet, args.duration, meter, args.hb_client)
        if p1 is not None and p2 is not None:
            prof = {"latency": p1.summary(), "heartbeats": p2.summary()}
        errors = dict(fleet.errors)
        return {
            "register_s": round(reg_s, 2),
            "latency": lat,
            "heartbeats": hb,
            "profile": prof,
            "agent_errors": errors,
            "server_alive": all(c.proc.poll() is None for c in replicas),
        }
    finally:
        if fleet is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fleet.stop(), timeout=15)
        for c in others:
            c.stop()
        coord.stop()


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    version = ""
    for i in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="gpunet-bench-"))
        try:
            if args.database == "sqlite":
                url = f"sqlite:///{workdir / 'gpunet.db'}"
                version = db_version(url)
                runs.append(asyncio.run(run_once(args, url, workdir)))
            else:
                with pg_database(args.pg_url) as url:
                    version = db_version(url)
                    runs.append(asyncio.run(run_once(args, url, workdir)))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not args.json:
            print(f"run {i + 1}/{args.runs}: " + one_line(runs[-1]), file=sys.stderr)
    return report(args, runs, version)


def one_line(r: dict[str, Any]) -> str:
    s = r["latency"]["submit_to_assignment"]
    return (
        f"submit->assignment p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
        f"max {s['max_ms']} ms (n={s['count']}); "
        f"heartbeats {r['heartbeats']['heartbeats_per_s']}/s"
    )


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 1) if vals else None


def report(args: argparse.Namespace, runs: list[dict[str, Any]], version: str) -> dict[str, Any]:
    lat = [r["latency"]["submit_to_assignment"] for r in runs]
    hb = [r["heartbeats"] for r in runs]
    med = {
        "submit_to_assignment_p50_ms": _median([x["p50_ms"] for x in lat]),
        "submit_to_assignment_p99_ms": _median([x["p99_ms"] for x in lat]),
        "submit_to_assignment_max_ms": _median([x["max_ms"] for x in lat]),
        "heartbeats_per_s": _median([x["heartbeats_per_s"] for x in hb]),
        "heartbeats_per_server_cpu_s": _median([x["heartbeats_per_server_cpu_s"] for x in hb]),
        "heartbeat_phase_server_cpu_pct": _median([x["server_cpu_pct"] for x in hb]),
        "heartbeat_phase_loadgen_cpu_pct": _median([x["loadgen_cpu_pct"] for x in hb]),
        "heartbeat_phase_machine_busy_pct": _median([x["machine_busy_pct"] for x in hb]),
        "heartbeat_phase_other_cpu_pct": _median([x.get("other_cpu_pct") for x in hb]),
        "latency_phase_server_cpu_pct": _median([r["latency"]["server_cpu_pct"] for r in runs]),
        # costs for the capacity model (docs/replicas.md): CPU per job placed and run (submit,
        # pass, work poll, started, finished, with the fleet's heartbeats meanwhile), and the
        # database's CPU per job and per heartbeat (PostgreSQL only)
        "server_cpu_ms_per_job": _median([_per(r["latency"], "server_cpu_s", 1e3) for r in runs]),
        "database_cpu_ms_per_job": _median(
            [_per(r["latency"], "database_cpu_s", 1e3) for r in runs]
        ),
        "database_cpu_us_per_heartbeat": _median(
            [_per(r["heartbeats"], "database_cpu_s", 1e6, count="accepted") for r in runs]
        ),
    }
    targets = {
        "submit_to_assignment_p50_ms": {
            "target": f"<= {TARGET_P50_MS:g}",
            "met": _le(med["submit_to_assignment_p50_ms"], TARGET_P50_MS),
        },
        "submit_to_assignment_p99_ms": {
            "target": f"<= {TARGET_P99_MS:g}",
            "met": _le(med["submit_to_assignment_p99_ms"], TARGET_P99_MS),
        },
        "heartbeats_per_s": {
            "target": f">= {TARGET_HB_PER_S:g}",
            "met": med["heartbeats_per_s"] is not None
            and med["heartbeats_per_s"] >= TARGET_HB_PER_S,
        },
    }
    return {
        "benchmark": "control_plane",
        "date": date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/control_plane.py", *sys.argv[1:]]),
        "machine": machine(),
        "database": args.database,
        "database_version": version,
        "agents": args.agents,
        "replicas": args.replicas,
        "gpus_per_agent": args.gpus_per_agent,
        "settings": {
            "duration_s": args.duration,
            "jobs": args.jobs,
            "submit_rate_per_s": args.submit_rate,
            "heartbeat_interval_s": args.heartbeat_interval,
            "job_runtime_s": args.job_runtime,
            "lease_timeout_s": args.lease_timeout,
            "heartbeat_client": args.hb_client,
            "runs": args.runs,
        },
        "median": med,
        "targets": targets,
        "limits": limits(med, os.cpu_count() or 1),
        "runs": runs,
    }


def _per(phase: dict[str, Any], key: str, unit: float, count: str = "assigned") -> float | None:
    v, n = phase.get(key), phase.get(count)
    return None if v is None or not n else round(v * unit / n, 2)


def _le(v: float | None, bound: float) -> bool:
    return v is not None and v <= bound


def limits(med: dict[str, Any], cores: int) -> str:
    """A plain reading of the CPU figures of the heartbeat phase."""
    srv, gen, mach = (
        med["heartbeat_phase_server_cpu_pct"],
        med["heartbeat_phase_loadgen_cpu_pct"],
        med["heartbeat_phase_machine_busy_pct"],
    )
    if srv is None:
        return "CPU use not available (no /proc)"
    text = (
        f"during the heartbeat phase the coordinator used {srv:g}% of one core, this load "
        f"generator {gen:g}%, the machine was {mach}% busy over {cores} cores. "
    )
    if srv >= 85:
        text += (
            "The coordinator is one Python process whose request handling runs on one "
            "event loop (the GIL), so ~100% of one core is its ceiling: it is CPU-bound "
            "in request handling."
        )
    elif mach is not None and mach >= 90:
        text += (
            "The machine's cores are saturated: coordinator and load generator compete for them."
        )
    else:
        text += "Neither side is CPU-saturated; the limit is latency/contention."
    return text


def print_summary(res: dict[str, Any]) -> None:
    m, med = res["machine"], res["median"]
    print(f"gpunet control-plane benchmark, {res['date']}")
    print(
        f"  machine   : {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"{m['os']}, Python {m['python']}"
    )
    print(f"  database  : {res['database']} ({res['database_version']})")
    print(
        f"  fleet     : {res['agents']} simulated agents x {res['gpus_per_agent']} GPUs, "
        f"{res['replicas']} coordinator replica(s)"
    )
    s = res["settings"]
    print(
        f"  settings  : {s['jobs']} jobs at {s['submit_rate_per_s']:g}/s, heartbeat every "
        f"{s['heartbeat_interval_s']:g}s, ceiling phase {s['duration_s']:g}s, "
        f"{s['runs']} run(s)"
    )
    print(f"  command   : {res['command']}")
    print()
    for i, r in enumerate(res["runs"], 1):
        lat, hb = r["latency"], r["heartbeats"]
        sa = lat["submit_to_assignment"]
        print(
            f"  run {i}: register {r['register_s']}s | submit->assignment p50 {sa['p50_ms']} "
            f"p99 {sa['p99_ms']} max {sa['max_ms']} ms (n={sa['count']}, missing "
            f"{lat['missing']}) | submit request p50 {lat['submit_request']['p50_ms']} ms | "
            f"server CPU {lat['server_cpu_pct']}%"
        )
        print(
            f"         heartbeats {hb['heartbeats_per_s']}/s ({hb['accepted']} in "
            f"{hb['duration_s']}s, {hb['in_flight']} in flight, "
            f"{hb['heartbeats_per_server_cpu_s']} per server CPU-second; request p50 "
            f"{hb['heartbeat_request']['p50_ms']} p99 {hb['heartbeat_request']['p99_ms']} ms)"
            f" | CPU: server {hb['server_cpu_pct']}%, load generator "
            f"{hb['loadgen_cpu_pct']}%, other processes (PostgreSQL included) "
            f"{hb['other_cpu_pct']}%, "
            f"machine {hb['machine_busy_pct']}%"
        )
        errs = {**lat["errors"], **hb["errors"], **r["agent_errors"]}
        if errs:
            print(f"         errors: {errs}")
        for phase, p in (r.get("profile") or {}).items():
            if "error" in p:
                print(f"         profile: {p['error']}")
            else:
                print(
                    f"         profile of the {phase} phase ({p['samples']} samples, "
                    "inclusive by package): "
                    + ", ".join(
                        f"{k} {v}%"
                        for k, v in sorted(
                            p["inclusive_by_package_pct"].items(), key=lambda kv: -kv[1]
                        )
                    )
                )
                print(
                    "         inclusive: "
                    + ", ".join(f"{k} {v}%" for k, v in p["inclusive_pct"].items())
                )
                for f in p["self_top"][:8]:
                    print(f"           {f['pct']:5.1f}%  {f['frame']}")
    print()
    t = res["targets"]
    ok = lambda k: "met" if t[k]["met"] else "MISSED"  # noqa: E731
    print(
        f"  median submit->assignment p50 : {med['submit_to_assignment_p50_ms']} ms "
        f"(target {t['submit_to_assignment_p50_ms']['target']} ms: "
        f"{ok('submit_to_assignment_p50_ms')})"
    )
    print(
        f"  median submit->assignment p99 : {med['submit_to_assignment_p99_ms']} ms "
        f"(target {t['submit_to_assignment_p99_ms']['target']} ms: "
        f"{ok('submit_to_assignment_p99_ms')})"
    )
    print(
        f"  median heartbeats/s           : {med['heartbeats_per_s']} "
        f"(target {t['heartbeats_per_s']['target']}: {ok('heartbeats_per_s')}); "
        f"{med['heartbeats_per_server_cpu_s']} per coordinator CPU-second"
    )
    print(f"  limits: {res['limits']}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--agents", type=int, default=200, help="simulated agents")
    p.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "GPUNET_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server URL where a temporary database may be created and dropped",
    )
    p.add_argument(
        "--duration", type=float, default=20.0, help="seconds of the heartbeat-ceiling phase"
    )
    p.add_argument("--jobs", type=int, default=200, help="jobs submitted in the latency phase")
    p.add_argument("--submit-rate", type=float, default=10.0, help="job submissions per second")
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        help="seconds between an agent's heartbeats in the latency phase",
    )
    p.add_argument("--gpus-per-agent", type=int, default=2)
    p.add_argument(
        "--job-runtime",
        type=float,
        default=0.5,
        help="simulated seconds between 'started' and 'finished'",
    )
    p.add_argument("--lease-timeout", type=float, default=30.0)
    p.add_argument(
        "--hb-client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client for the heartbeat-ceiling phase",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat on a fresh coordinator and database; medians are reported",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the coordinator with py-spy during both phases (py-spy "
        "takes CPU too: figures from a profiled run read a little low)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="coordinator replicas on one database (more than one needs --database postgres)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    if args.replicas > 1 and args.database != "postgres":
        p.error("--replicas above 1 needs --database postgres (SQLite serves one coordinator)")
    if args.agents < 1 or args.runs < 1 or args.jobs < 1 or args.submit_rate <= 0:
        p.error("--agents, --runs, --jobs and --submit-rate must be positive")
    with contextlib.suppress(OSError, ValueError):  # many sockets: one per agent, twice
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 4 * args.agents + 256))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # run the same cleanup as Ctrl-C

    signal.signal(signal.SIGTERM, _terminate)
    try:
        res = run_all(args)
    except KeyboardInterrupt:
        print("interrupted; coordinator stopped and temporary files removed", file=sys.stderr)
        sys.exit(130)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_summary(res)


if __name__ == "__main__":
    main()
