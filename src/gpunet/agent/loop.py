"""The agent: dials out to the coordinator, keeps its lease, runs attempts, reports them.

Everything is initiated by the agent (register, heartbeat, long-poll for work, reports), so it
works behind NAT. Reports are queued and retried, each attempt's in order, until the coordinator
accepts or rejects them, so a coordinator restart loses nothing; what is queued together goes
in one request where the coordinator takes batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from gpunet import __version__
from gpunet.agent import (
    bench,
    checkpoints,
    energy,
    lease,
    owner,
    rendezvous,
    runner,
    watchdog,
)
from gpunet.agent.answers import Answers, Backoff
from gpunet.agent.gpus.base import GpuBackend
from gpunet.agent.journal import Journal
from gpunet.agent.sandbox import Isolation
from gpunet.agent.sandbox.image_jobs import ContainerHost
from gpunet.agent.tunnel import TunnelClient
from gpunet.core.energy import Meter
from gpunet.core.gangs import gang_env
from gpunet.core.isolation import Isolation as Level
from gpunet.core.jobs import CANCEL_GRACE_S
from gpunet.failover import AsyncFailoverTransport, Coordinators, split_urls
from gpunet.tls import untrusted_message, untrusted_reason
from gpunet.wire.agent import (
    MAX_BATCH_REPORTS,
    MAX_HELD_CHARS,
    MAX_HELLO_FINISHED,
    MAX_REASON_CHARS,
    EnergyUse,
    FinishedAttempt,
    FinishReport,
    GangInfo,
    HealthReport,
    Heartbeat,
    HeartbeatAnswer,
    Hello,
    HelloRequest,
    LogLine,
    LogReport,
    LogsAccepted,
    Registered,
    Registration,
    Report,
    ReportOutcome,
    Reports,
    ReportsAccepted,
    StartedAttempt,
    StartItem,
    StopItem,
    Work,
)

log = logging.getLogger("gpunet.agent")

LOG_SLICE = 32 * 1024  # characters of output per log chunk
LOG_REPORT_CHARS = 64 * 1024  # characters of output per log report
# bytes of start and finish reports in one batch: far below the coordinator's body cap (1 MiB)
MAX_BATCH_BYTES = 256 * 1024

# a queued report: its attempt, the report, its journal sequence number
Queued = tuple[str, Report, int]

A = TypeVar("A", bound=BaseModel)


class Rejected(Exception):
    """The coordinator refused a request for good (4xx): retrying will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The coordinator's own words (its error envelope's message) when it sent them."""
        try:
            return str(json.loads(self.body)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return f"HTTP {self.status}: {self.body[:300]}"


class BadAnswer(Exception):
    """A 2xx answer that does not match the agent protocol (a coordinator of another version)."""


@dataclass
class AttemptCtx:
    # what the coordinator sent: an attempt to start, or only to stop (never started here)
    info: StartItem | StopItem
    run: runner.Run | None = None
    orphaned: bool = False  # the coordinator no longer counts it: drop its reports
    logs: list[dict[str, str]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    meters: dict[int, Meter] = field(default_factory=dict)  # energy per GPU index
    log_sent: int = 0  # bytes of output collected for the coordinator
    output_closed: bool = False  # past the coordinator's cap: further output is dropped
    reclaimed: bool = False  # stopped because the GPU's owner took it back (agent/owner.py)
    stop_reason: str | None = None  # why it was stopped before it started, when not cancelled
    finished_at_exit: bool = False  # its success journaled when its job exited (_finish_at_exit)

    @property
    def id(self) -> str:
        return self.info.attempt_id

    @property
    def token(self) -> int:
        return self.info.fencing_token

    @property
    def gpu_indices(self) -> list[int]:
        return self.info.gpu_indices if isinstance(self.info, StartItem) else []

    @property
    def max_log_bytes(self) -> int | None:
        return self.info.max_log_bytes if isinstance(self.info, StartItem) else None


def with_unsent_xids(
    readings: list[dict[str, Any]], unsent: dict[int, list[int]]
) -> list[dict[str, Any]]:
    """Health readings with the XIDs an earlier, failed heartbeat could not deliver."""
    if not unsent:
        return readings
    out = []
    for r in readings:
        old = unsent.get(r.get("index", -1), [])
        out.append({**r, "xids": old + list(r.get("xids") or [])} if old else r)
    return out


class Agent:
    def __init__(
        self,
        coordinator: str,
        backend: GpuBackend,
        home: Path,
        *,
        join_token: str | None = None,
        name: str | None = None,
        site: str | None = None,
        verify: bool | ssl.SSLContext = True,
        isolation: Isolation | None = None,
        accepts_unisolated: bool = False,
        containers: ContainerHost | None = None,
        labels: dict[str, str] | None = None,
        owner_policy: owner.OwnerPolicy | None = None,
        advertise_addr: str | None = None,
        rendezvous_ports: str | None = None,
    ) -> None:
        """``verify``: how to check an https coordinator's certificate (gpunet.tls);
        ``labels``: what the node says of itself, e.g. its site's PUE and tariff;
        ``owner_policy``: how the GPUs' owner takes them back (None: never);
        ``advertise_addr``: where other members of a gang reach this node (default: the
        address this host reaches the coordinator from); ``rendezvous_ports``: "LOW-HIGH",
        the ports a gang whose rank 0 runs here may use (default: core.gangs.DEFAULT_PORTS)."""
        # ``URL1,URL2``: replicas of one network; requests fail over between them
        self.coordinators = Coordinators(split_urls(coordinator))
        self.url = self.coordinators.urls[0]  # requests to it go to the replica in use
        self.backend = backend
        self.home = home
        self.join_token = join_token
        self.name = name or socket.gethostname()
        self.site = site
        self.labels = dict(labels or {})
        # None: worked out at each (re)connect, so a route that changed is picked up
        self.advertise_addr = advertise_addr
        self.rendezvous_ports = rendezvous_ports
        self.node_id: str | None = None
        self.token: str | None = None
        self.lease_timeout_s = 30.0
        self.last_renewed = time.monotonic()
        self.attempts: dict[str, AttemptCtx] = {}
        # attempts whose stop was taken, until their finish report is answered: the work poll
        # names them (and the attempts held) so the coordinator does not send them again
        self.stops_taken: set[str] = set()
        # (attempt id, report, its journal sequence number), delivered in order
        self.reports: asyncio.Queue[Queued] = asyncio.Queue()
        # whether the coordinator takes batched reports (POST /v1/agent/reports); None: not
        # known yet (asked again at each connect: the coordinator may have been upgraded)
        self.batch_reports: bool | None = None
        self.journal = Journal(home)  # reports survive the agent's death (agent.journal)
        self.answers = Answers()  # resets retry backoff whenever the coordinator answers
        self._stoppers: set[asyncio.Task[None]] = set()  # graceful stops in progress
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=70.0),
            verify=verify,
            transport=AsyncFailoverTransport(self.coordinators, verify)
            if len(self.coordinators.urls) > 1
            else None,
        )
        self.stopping = asyncio.Event()
        self.verify = verify
        # service replicas running here: attempt id -> their port on 127.0.0.1, which the
        # coordinator's gateway reaches through this agent's tunnel (agent/tunnel.py)
        self.service_ports: dict[str, int] = {}
        self._unsent_xids: dict[int, list[int]] = {}  # XIDs a failed heartbeat did not deliver
        self.benchmark_every_s = 6 * 3600.0  # periodic benchmarks of idle GPUs
        # how jobs are isolated here; without a sandbox, jobs run as bare processes
        self.isolation = isolation or Isolation("none", "no sandbox configured")
        self.sandbox = self.isolation.sandbox
        self.accepts_unisolated = accepts_unisolated
        self.containers = containers  # runs jobs that name an image
        self.owner = (
            owner.OwnerWatcher(owner_policy, len(backend.discover())) if owner_policy else None
        )
        self.beat_now = asyncio.Event()  # send a heartbeat now (an owner-busy flag changed)
        # service replicas passing their readiness probe (sent with every heartbeat; a change
        # sends one at once)
        self.ready: set[str] = set()
        self.probes = httpx.AsyncClient(timeout=httpx.Timeout(5.0), trust_env=False)
        # stops the attempts when this process cannot (frozen, killed): agent/watchdog.py
        self.use_watchdog = sys.platform.startswith("linux")
        self.watchdog: subprocess.Popen[bytes] | None = None

    # ---- connection -------------------------------------------------------------------
    @property
    def _cred_file(self) -> Path:
        return self.home / "agent.json"

    def _registration(self) -> dict[str, Any]:
        return Registration(
            name=self.name,
            gpus=[g.to_wire() for g in self.backend.discover()],
            agent_version=__version__,
            site=self.site,
            labels=self.labels,
            isolation=Level(self._level()),
            runtimes=[self.containers.runtime.name] if self.containers else [],
            accepts_unisolated=self.accepts_unisolated and self.isolation.level == "none",
            advertise_addr=self.advertise_addr or rendezvous.default_advertise_addr(self.url),
            rendezvous_ports=self.rendezvous_ports,
        ).model_dump(mode="json")

    def _level(self) -> str:
        """What this node offers strangers: containers count only beside a working sandbox,
        since jobs without an image still run in the sandbox."""
        if self.isolation.level == "sandbox" and self.containers is not None:
            return "container"
        return self.isolation.level

    async def _call(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        r = await self.http.request(method, self.url + path, headers=headers, **kw)
        self.answers.answered()
        if r.status_code >= 500:
            raise httpx.TransportError(f"coordinator answered {r.status_code}")
        if r.status_code >= 400:
            raise Rejected(r.status_code, r.text)
        return (
            r.json()
            if r.headers.get("content-type", "").startswith("application/json")
            else r.content
        )

    async def _ask(
        self, answer: type[A], method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> A:
        """Call the coordinator and read its answer as ``answer``."""
        res = await self._call(method, path, token=token, **kw)
        try:
            return answer.model_validate(res)
        except ValidationError as exc:
            raise BadAnswer(f"{method} {path}: the answer does not match: {exc}") from None

    async def connect(self) -> None:
        """Register (join token) or re-connect (saved node token), retrying with backoff."""
        saved = self._load_credentials()
        self.batch_reports = None
        delay = 0.2
        while not self.stopping.is_set():
            try:
                if saved:
                    self.node_id, self.token = saved["node_id"], saved["token"]
                    try:
                        await self._replay_journal()
                        body, carried = self._hello_body()
                        hello = await self._ask(Hello, "POST", "/v1/agent/hello", json=body)
                        self.journal.ack_all(carried)  # settled with the hello
                        self.lease_timeout_s = hello.lease_timeout_s
                        log.info("reconnected as %s", self.node_id)
                        break
                    except Rejected as exc:
                        if exc.status != 401 or not self.join_token:
                            raise
                        saved = None  # the coordinator forgot us: join afresh
                if not self.join_token:
                    raise SystemExit("no saved credentials and no --join-token")
                res = await self._ask(
                    Registered,
                    "POST",
                    "/v1/agent/register",
                    token=self.join_token,
                    json=self._registration(),
                )
                self.node_id, self.token = res.node_id, res.token
                self.lease_timeout_s = res.lease_timeout_s
                # reports of an earlier registration concern attempts this node no longer has
                self.journal.ack_all([e.seq for e in self.journal.pending()])
                self._save_credentials()
                log.info("registered as %s", self.node_id)
                break
            except httpx.TransportError as exc:
                reason = untrusted_reason(exc)
                if reason is not None:  # retrying will not make the certificate trusted
                    raise SystemExit(f"error: {untrusted_message(self.url, reason)}") from None
                log.warning("coordinator unreachable (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        self._renewed()

    def _renewed(self) -> None:
        """The lease was renewed now: noted here and in the lease file the watchdog reads."""
        self.last_renewed = time.monotonic()
        try:
            watchdog.write_lease(self.home, self.last_renewed, self.lease_timeout_s)
        except OSError as exc:  # a full disk must not stop the heartbeats
            log.warning("could not write the lease file: %s", exc)

    def _start_watchdog(self) -> None:
        if self.use_watchdog and (self.watchdog is None or self.watchdog.poll() is not None):
            if self.watchdog is not None:
                log.warning("the watchdog exited (%s); starting it again", self.watchdog.returncode)
            self.watchdog = watchdog.spawn(self.home)

    def _load_credentials(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self._cred_file.read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("coordinator") in self.coordinators.urls else None

    def _save_credentials(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self._cred_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"coordinator": self.url, "node_id": self.node_id, "token": self.token})
        )
        os.chmod(tmp, 0o600)
        tmp.replace(self._cred_file)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    # ---- loops ------------------------------------------------------------------------
    def _prepare_home(self) -> None:
        """The home holds the node token and every attempt's files: the agent's alone."""
        (self.home / "work").mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        os.chmod(self.home / "work", 0o700)

    def reap_leftovers(self) -> dict[str, list[int]]:
        """Kill what attempts of an earlier run of this agent left (it may have been killed
        with -9): their cgroups hold every process they started. Runs before any new work."""
        if self.containers is not None:
            for name in self.containers.reap_leftovers():
                log.warning("removed leftover container %s", name)
        if self.sandbox is None:
            killed = runner.reap_bare_leftovers(self.home / "work", keep=set(self.attempts))
        else:
            killed = self.sandbox.reap_leftovers(keep=set(self.attempts))
        for name, pids in killed.items():
            log.warning(
                "killed leftovers of attempt %s: %s",
                name,
                ", ".join(map(str, pids)) or "no processes",
            )
            shutil.rmtree(self.home / "work" / name, ignore_errors=True)
        return killed

    async def run(self) -> None:
        self._prepare_home()
        self.journal.open()
        await asyncio.to_thread(self.reap_leftovers)
        watchdog.clear_records(self.home)
        self._renewed()  # a fresh lease file before the watchdog reads it
        self._start_watchdog()
        await self.connect()  # delivers what the journal holds before any new work
        for e in self.journal.pending():  # finish reports the hello had no room for
            self.reports.put_nowait((e.attempt_id, e.report(), e.seq))
        tasks = [
            asyncio.create_task(c)
            for c in (
                self._heartbeat_loop(),
                self._work_loop(),
                self._report_loop(),
                self._log_flush_loop(),
                self._lease_watch(),
                bench.benchmark_loop(self),
                # one tunnel to each coordinator replica; cancelled with the other loops
                TunnelClient(
                    self.coordinators.urls, self.token or "", self.verify, self.service_ports.get
                ).run(),
            )
        ]
        if self.owner is not None:
            tasks.append(asyncio.create_task(owner.owner_loop(self, self.owner)))
        await self.stopping.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(self._stop(a, "agent shutting down") for a in list(self.attempts.values())),
            return_exceptions=True,
        )
        running = [a.task for a in list(self.attempts.values()) if a.task is not None]
        if running:  # let them kill their cgroups and remove their files
            await asyncio.wait(running, timeout=10)
        if self.watchdog is not None:  # every attempt is stopped: it exits with nothing to do
            await asyncio.to_thread(watchdog.close, self.watchdog)
        if self.sandbox is not None:
            self.sandbox.close()
        await self.http.aclose()
        await self.probes.aclose()
        self.journal.close()
        self.backend.close()

    def _busy_indices(self) -> set[int]:
        return {i for a in self.attempts.values() for i in a.gpu_indices}

    async def _heartbeat_loop(self) -> None:
        while True:
            interval = max(0.2, min(5.0, self.lease_timeout_s / 6))
            health: list[dict[str, Any]] = []
            try:
                busy = self._busy_indices()
                readings = self.backend.telemetry(busy)
                for running in self.attempts.values():
                    if running.meters:
                        energy.sample(running.meters, readings)
                health = with_unsent_xids(self.backend.health(busy), self._unsent_xids)
                self._unsent_xids = {}
                beat = Heartbeat(
                    gpus=owner.mark(self.owner, [t.to_wire() for t in readings]),
                    attempts=[a.id for a in self.attempts.values() if not a.orphaned],
                    health=health_reports(health),
                    ready=sorted(self.ready),
                )
                res = await self._ask(
                    HeartbeatAnswer,
                    "POST",
                    "/v1/agent/heartbeat",
                    json=beat.model_dump(mode="json"),
                )
                self.lease_timeout_s = res.lease_timeout_s
                self._renewed()
                for att_id in res.stop:
                    ctx = self.attempts.get(att_id)
                    if ctx:
                        ctx.orphaned = True
                        await self._stop(ctx, "the coordinator no longer counts this attempt")
            except (httpx.TransportError, Rejected, BadAnswer, ValidationError) as exc:
                # ValidationError: a reading out of the protocol's bounds; the next may pass
                log.warning("heartbeat failed: %s", exc)
                # XIDs are events, read once: keep them for the next heartbeat
                self._unsent_xids = {r["index"]: list(r["xids"]) for r in health if r.get("xids")}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.beat_now.wait(), timeout=interval)
            self.beat_now.clear()

    async def _lease_watch(self) -> None:
        """Stop every attempt when the lease cannot be renewed, a margin before the coordinator
        re-queues them elsewhere (agent.lease): two copies must not run."""
        while True:
            await asyncio.sleep(min(0.5, self.lease_timeout_s / 20))
            self._start_watchdog()  # again, should it have died
            if time.monotonic() - self.last_renewed > lease.stop_after(self.lease_timeout_s):
                for ctx in list(self.attempts.values()):
                    if ctx.run and ctx.run.stop_reason is None:
                        log.warning("lease lapsing: stopping %s", ctx.id)
                        stopper = asyncio.create_task(
                            self._stop(ctx, "lease lost", lease.stop_grace(self.lease_timeout_s))
                        )
                        self._stoppers.add(stopper)
                        stopper.add_done_callback(self._stoppers.discard)

    async def _work_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                held = {"have": ",".join(self.attempts), "stopping": ",".join(self.stops_taken)}
                if max(map(len, held.values())) > MAX_HELD_CHARS:
                    held = {}  # too many to name: sent everything, known ones skipped below
                work = await self._ask(Work, "GET", "/v1/agent/work", params={"wait": 20, **held})
                delay = 0.2
            except (httpx.TransportError, Rejected, BadAnswer) as exc:
                log.warning("work poll failed: %s", exc)
                await asyncio.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 5.0)
                continue
            for info in work.start:
                if info.attempt_id not in self.attempts:
                    ctx = AttemptCtx(info)
                    self.attempts[ctx.id] = ctx
                    ctx.task = asyncio.create_task(self._run_attempt(ctx))
            for item in work.stop:
                self.stops_taken.add(item.attempt_id)
                known = self.attempts.get(item.attempt_id)
                why = item.reason or ("cancelled" if item.kind == "cancel" else item.kind)
                if known is not None:
                    # the stop (SIGTERM, the grace to save a checkpoint, SIGKILL) runs on its
                    # own: one job's grace must not hold up this node's other work
                    stopper = asyncio.create_task(self._stop(known, why, item.grace_s))
                    self._stoppers.add(stopper)
                    stopper.add_done_callback(self._stoppers.discard)
                else:  # stopped before we ever started it: confirm so its GPUs free up
                    self._finish(AttemptCtx(item), -15, why)

    async def _stop(self, ctx: AttemptCtx, reason: str, grace_s: float = CANCEL_GRACE_S) -> None:
        if ctx.run is not None and ctx.run.proc.returncode is None:
            if ctx.run.stop_reason is not None:
                return  # already stopping: the first stop's grace stands
            await ctx.run.stop(reason, grace_s)
        elif ctx.run is None and ctx.task is not None and not ctx.task.done():
            ctx.task.cancel()

    def _may_run(self) -> str | None:
        """Asked when a spawned attempt is about to be let run: None, or why not. Not once
        the lease has gone unrenewed past the point where running attempts are stopped
        (``_lease_watch``): the coordinator may already have re-queued the work."""
        since = time.monotonic() - self.last_renewed
        if since > lease.stop_after(self.lease_timeout_s):
            return f"lease lost: not renewed for {since:.1f}s when the attempt was to start"
        return None

    async def _run_attempt(self, ctx: AttemptCtx) -> None:
        item = ctx.info
        assert isinstance(item, StartItem)  # only attempts to start are run
        spec = item.spec
        workdir = self.home / "work" / ctx.id
        why = owner.blocked(self.owner, item.gpu_indices)
        if why is not None:  # assigned just before the owner took the GPU back: never start
            ctx.reclaimed = True
            self._finish(ctx, -15, why)
            return
        ckpt = self._checkpoints(ctx, workdir)
        probe: asyncio.Task[None] | None = None  # a service replica's readiness probe
        # only a gang's rank 0 saves the job's checkpoint; every member restores it
        uploads = item.gang is None or item.gang.rank == 0
        try:
            try:
                if spec.get("workdir"):
                    data = await self._call("GET", f"/v1/agent/blobs/{spec['workdir']}")
                    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    runner.unpack(data, workdir)
                try:
                    await ckpt.restore(item.checkpoint)
                except checkpoints.CheckpointError as exc:
                    # never start over silently: the job goes back to the queue (a retry)
                    ctx.logs.append({"stream": "system", "data": f"restore failed: {exc}\n"})
                    self._flush_logs(ctx)
                    self._finish(ctx, None, f"checkpoint restore failed: {exc}", lost=True)
                    return
                if item.gang is not None:
                    try:
                        if self.sandbox is not None and self.sandbox.config.network == "none":
                            raise rendezvous.RendezvousFailed(
                                "rendezvous: this node runs jobs without a network "
                                "(--job-network none): a member cannot reach its gang"
                            )
                        await rendezvous.check(item.gang, item.job_id, item.number)
                    except rendezvous.RendezvousFailed as exc:
                        ctx.logs.append({"stream": "system", "data": f"{exc}\n"})
                        self._flush_logs(ctx)
                        self._finish(ctx, None, str(exc), lost=True, rendezvous_failed=True)
                        return
                # the watchdog reports the attempt's end should this agent be frozen then
                watchdog.note_token(self.home, ctx.id, ctx.token)
                avars = attempt_vars(item)
                ctx.run = await runner.start(
                    launch_spec(item),
                    workdir,
                    item.gpu_indices,
                    avars,
                    lambda s, d: self._collect(ctx, s, d),
                    sandbox=self.sandbox,
                    containers=self.containers,
                    may_run=self._may_run,
                )
            except runner.NotStarted as exc:
                # this agent could not renew its lease (it was frozen, say): the coordinator
                # may have given the work to another node already; it runs there, not here
                log.warning("attempt %s not started: %s", ctx.id, exc)
                self._finish(ctx, None, str(exc), lost=True)
                return
            except asyncio.CancelledError:
                self._finish(ctx, -15, ctx.stop_reason or "cancelled")
                return
            except Exception as exc:  # a bad archive or command: the attempt fails
                ctx.logs.append({"stream": "system", "data": f"could not start: {exc}\n"})
                self._flush_logs(ctx)
                self._finish(ctx, 127, f"start failed: {exc}")
                return
            ctx.meters = energy.start(self.backend, item.gpu_indices, self._busy_indices())
            self._report(ctx, Report(fencing_token=ctx.token))
            if avars.get("service_port"):
                self.service_ports[ctx.id] = avars["service_port"]
                probe = asyncio.create_task(self._probe(ctx, avars["service_port"]))
            if uploads:
                ckpt.start_periodic(checkpoints.interval_of(spec))
            code = await ctx.run.wait(lambda code: self._finish_at_exit(ctx, code))
            await ckpt.stop_periodic()
            if ctx.finished_at_exit:
                self._flush_logs(ctx)  # the output that came after (taken after the finish)
                return
            if uploads and checkpoints.final_wanted(ctx.run.stop_reason, code, ctx.orphaned):
                await ckpt.final()
            energy.sample(ctx.meters, self.backend.telemetry(self._busy_indices()))
            used = energy.report(ctx.meters)
            if code != 0 and watchdog.stopped(self.home, ctx.id):
                # stopped while this process could not (frozen): the lease lapsed, so it is
                # lost (run again), not failed; a success before the stop stays one
                ctx.run.stop_reason = checkpoints.LEASE_LOST
                log.warning("attempt %s was stopped by the agent's watchdog", ctx.id)
                self._collect(ctx, "system", "stopped by the agent's watchdog: lease lost\n")
            self._flush_logs(ctx)
            reason = ctx.run.stop_reason
            if ctx.run.oom_killed and reason is None:
                reason = "out of memory: killed by the kernel at the attempt's memory limit"
                ctx.logs.append({"stream": "system", "data": reason + "\n"})
                self._flush_logs(ctx)
            if reason == "lease lost" and code != 0:  # a success stays one (late, maybe)
                self._finish(ctx, code, reason, lost=True, energy=used)
            else:
                self._finish(ctx, code, reason or f"exit code {code}", energy=used)
        finally:
            if probe is not None:
                probe.cancel()
            self.service_ports.pop(ctx.id, None)
            if ctx.id in self.ready:
                self.ready.discard(ctx.id)
                self.beat_now.set()
            await ckpt.stop_periodic()
            if ctx.run is not None:
                try:
                    ctx.run.close()
                except OSError as exc:
                    log.warning("could not clean up attempt %s: %s", ctx.id, exc)
            watchdog.forget(self.home, ctx.id)
            shutil.rmtree(workdir, ignore_errors=True)
            if spec.get("launcher") == "ray":  # its Ray's files (see ray_command)
                shutil.rmtree(RAY_TMP.format(attempt=ctx.id), ignore_errors=True)

    async def _probe(self, ctx: AttemptCtx, port: int) -> None:
        """Probe a service replica's readiness path until the attempt ends; a change in its
        answer is sent to the coordinator at once (a heartbeat), which puts the replica into
        the gateway's rotation or takes it out."""
        assert isinstance(ctx.info, StartItem)
        readiness = (ctx.info.spec.get("service") or {}).get("readiness") or {}
        url = f"http://127.0.0.1:{port}{readiness.get('path', '/')}"
        period = float(readiness.get("period_s", 1.0))
        while True:
            try:
                r = await self.probes.get(url, timeout=max(1.0, min(5.0, period * 2)))
                ok = 200 <= r.status_code < 300
            except httpx.HTTPError:
                ok = False
            if ok != (ctx.id in self.ready):
                (self.ready.add if ok else self.ready.discard)(ctx.id)
                self._collect(ctx, "system", f"readiness {url}: {'ready' if ok else 'not ready'}\n")
                self.beat_now.set()
            await asyncio.sleep(period)

    def _checkpoints(self, ctx: AttemptCtx, workdir: Path) -> checkpoints.Sync:
        """The attempt's checkpoint directory, synced with the coordinator's store."""

        def note(line: str) -> None:
            self._collect(ctx, "system", line + "\n")

        return checkpoints.Sync(
            http=self.http,
            url=self.url,
            headers=lambda: {"Authorization": f"Bearer {self.token}"},
            attempt_id=ctx.id,
            fencing_token=ctx.token,
            directory=checkpoints.directory_of(workdir),
            note=note,
        )

    def _report(self, ctx: AttemptCtx, rep: Report) -> None:
        if ctx.orphaned:
            if isinstance(rep, FinishReport):
                self.attempts.pop(ctx.id, None)
                self.stops_taken.discard(ctx.id)
            return
        kind = report_kind(rep)
        # start and finish reports decide billing and whether the job runs again: on disk
        # before they are queued; output is only flushed
        seq = self.journal.append(ctx.id, kind, rep.model_dump(mode="json"), sync=kind != "logs")
        self.reports.put_nowait((ctx.id, rep, seq))

    def _finish_at_exit(self, ctx: AttemptCtx, code: int) -> None:
        """A bare attempt whose job exited 0 by itself: its finish is journaled at once, before
        the agent waits for the job's leftovers and output. Between the job's exit (the agent
        reaps it) and that journal entry the success exists only in this process: an agent
        frozen there loses its lease, and its watchdog, which reports a frozen agent's
        journaled finishes and unreaped exits, would see neither, so the work would run again
        elsewhere. Anything else (a failure, a stop, a sandbox's or container's end) is
        reported once all of it is known."""
        run = ctx.run
        if (
            code != 0
            or run is None
            or run.stop_reason is not None
            or run.box is not None
            or run.container is not None
            or ctx.orphaned
        ):
            return
        energy.sample(ctx.meters, self.backend.telemetry(self._busy_indices()))
        self._flush_logs(ctx)  # the output read so far goes first
        self._finish(ctx, 0, "exit code 0", energy=energy.report(ctx.meters))
        ctx.finished_at_exit = True

    def _finish(
        self,
        ctx: AttemptCtx,
        exit_code: int | None,
        reason: str,
        *,
        lost: bool = False,
        energy: list[EnergyUse] | None = None,
        rendezvous_failed: bool = False,
    ) -> None:
        """Report the attempt ended (the reason cut to what the coordinator keeps), with the
        time it ran on this host's monotonic clock (what its tenant is billed)."""
        ran = ctx.run is not None and ctx.run.exited_mono is not None
        rep = FinishReport(
            fencing_token=ctx.token,
            exit_code=exit_code,
            reason=reason[:MAX_REASON_CHARS],
            lost=lost,
            reclaimed=ctx.reclaimed,
            rendezvous_failed=rendezvous_failed,
            energy=energy or [],
            runtime_s=ctx.run.runtime_s if ran and ctx.run is not None else None,
        )
        self._report(ctx, rep)

    def _collect(self, ctx: AttemptCtx, stream: str, data: str) -> None:
        """Keep output for the coordinator until its cap for the attempt (sent with the work)
        is passed: the piece that crosses the cap still goes, so the coordinator records the
        truncation; everything after is dropped here (the job's pipes are still drained)."""
        if ctx.output_closed:
            return
        ctx.logs.append({"stream": stream, "data": data})
        ctx.log_sent += len(data.encode("utf-8", "surrogatepass"))
        cap = ctx.max_log_bytes
        if cap is not None and ctx.log_sent > cap:
            ctx.output_closed = True

    def _flush_logs(self, ctx: AttemptCtx) -> None:
        if not ctx.logs:
            return
        chunks: list[dict[str, str]] = []
        for c in ctx.logs:  # join consecutive pieces of one stream, in slices of bounded size
            data = c["data"]
            while data:
                last = chunks[-1] if chunks else None
                if last and last["stream"] == c["stream"] and len(last["data"]) < LOG_SLICE:
                    room = LOG_SLICE - len(last["data"])
                    last["data"] += data[:room]
                else:
                    room = LOG_SLICE
                    chunks.append({"stream": c["stream"], "data": data[:room]})
                data = data[room:]
        ctx.logs.clear()
        # several reports rather than one huge one: each stays far below the body cap even
        # when every character needs a 6-byte JSON escape
        batch: list[LogLine] = []
        size = 0
        for c in chunks:
            if batch and size + len(c["data"]) > LOG_REPORT_CHARS:
                self._report(ctx, LogReport(fencing_token=ctx.token, chunks=batch))
                batch, size = [], 0
            batch.append(LogLine(stream=c["stream"], data=c["data"]))
            size += len(c["data"])
        self._report(ctx, LogReport(fencing_token=ctx.token, chunks=batch))

    async def _log_flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            for ctx in list(self.attempts.values()):
                self._flush_logs(ctx)

    async def _report_loop(self) -> None:
        """Deliver the queued reports, each attempt's in order: what is queued at the moment
        goes in one round (batched where the coordinator takes batches); each report is marked
        done in the journal once answered."""
        held: collections.deque[Queued] = collections.deque()
        while True:
            if not held:
                held.append(await self.reports.get())
            while not self.reports.empty():
                held.append(self.reports.get_nowait())
            taken = take_round(held)
            # an older coordinator: one request per report, in the order they were queued
            steps = [(False, taken)] if self.batch_reports is False else delivery_steps(taken)
            for batched, items in steps:
                sent = self._deliver_batch(items) if batched else self._deliver_each(items)
                if not await sent:
                    return  # shutting down: the journal keeps them for the next run

    def _answered(self, att_id: str, rep: Report, seq: int) -> None:
        """A report the coordinator answered (taken or refused for good): done."""
        self.journal.ack(seq)
        if isinstance(rep, FinishReport):
            self.attempts.pop(att_id, None)
            self.stops_taken.discard(att_id)

    async def _deliver_each(self, items: list[Queued]) -> bool:
        """Send reports one request each, in order. False if the agent stops first."""
        for att_id, rep, seq in items:
            if not await self._deliver(att_id, rep):
                return False
            self._answered(att_id, rep, seq)
        return True

    async def _deliver_batch(self, items: list[Queued]) -> bool:
        """Send start and finish reports in one ``POST /v1/agent/reports``, retried while the
        coordinator is away (5xx, no answer, or a 5xx for some of them); each report's own
        answer is taken as its own request's would be. A coordinator without the endpoint
        (404, 405) gets one request per report from then on; a batch refused whole is sent
        one report at a time. False if the agent stops first."""
        if len(items) < 2 or self.batch_reports is False:
            return await self._deliver_each(items)
        backoff = Backoff(self.answers)
        while items and not self.stopping.is_set():
            ordered, body = batch_body(items)
            try:
                res = await self._ask(ReportsAccepted, "POST", "/v1/agent/reports", json=body)
                outcomes = outcomes_of(ordered, res)
            except httpx.TransportError as exc:
                log.warning("%d reports failed (%s); retrying", len(items), exc)
                await backoff.pause()
                continue
            except (Rejected, BadAnswer) as exc:
                if not isinstance(exc, Rejected) or exc.status in (404, 405):
                    log.info("the coordinator takes no batched reports (%s): one request each", exc)
                    self.batch_reports = False
                else:
                    log.warning("batched reports refused (%s): one request each", exc)
                return await self._deliver_each(ordered)
            self.batch_reports = True
            items = []
            for item, outcome in zip(ordered, outcomes, strict=True):
                if outcome.status >= 500:
                    items.append(item)  # the coordinator could not take it now: again
                elif not await self._take_outcome(item, outcome):
                    return False
            if items:
                log.warning("%d batched reports not taken now; retrying", len(items))
                await backoff.pause()
        return not items

    async def _take_outcome(self, item: Queued, outcome: ReportOutcome) -> bool:
        """One batched report's answer, as ``_deliver`` takes its own request's."""
        att_id, rep, seq = item
        if outcome.status >= 300:
            log.warning(
                "report %s of %s rejected: %s: %s",
                outcome.kind,
                att_id,
                outcome.status,
                outcome.message,
            )
            if outcome.status in (404, 409):
                await self._orphan(att_id)
            elif isinstance(rep, FinishReport) and not await self._deliver(
                att_id, minimal_finish(rep), shrunk=True
            ):  # the attempt must still end: the refused report cut to what ends it
                return False
        self._answered(att_id, rep, seq)
        return True

    async def _orphan(self, att_id: str) -> None:
        """The coordinator refused a report as stale or unknown: the attempt is not ours."""
        ctx = self.attempts.get(att_id)
        if ctx is not None:
            ctx.orphaned = True
            await self._stop(ctx, "rejected by the coordinator")

    async def _deliver(self, att_id: str, rep: Report, *, shrunk: bool = False) -> bool:
        """Send one report; retry while the coordinator is away (5xx, no answer), backing off
        until it answers anything. A 4xx is final for that report, so one bad report never
        blocks the ones after it (a finish report is sent again cut to what ends the attempt;
        ``shrunk``: this is that one). Returns False only if the agent stops first."""
        kind = report_kind(rep)
        backoff = Backoff(self.answers)
        while not self.stopping.is_set():
            try:
                res = await self._call(
                    "POST",
                    f"/v1/agent/attempts/{att_id}/{kind}",
                    json=rep.model_dump(mode="json"),
                )
                if isinstance(rep, LogReport) and logs_truncated(res):
                    ctx = self.attempts.get(att_id)
                    if ctx is not None:
                        ctx.output_closed = True  # the coordinator keeps no more output
                return True
            except Rejected as exc:
                log.warning("report %s of %s rejected: %s", kind, att_id, exc)
                if exc.status in (404, 409) or shrunk:
                    # stale fencing token or unknown attempt: it is not ours any more
                    await self._orphan(att_id)
                    return True
                if not isinstance(rep, FinishReport):
                    return True  # this report is dropped; the attempt goes on
                rep, shrunk = minimal_finish(rep), True  # the attempt must still end
            except httpx.TransportError as exc:
                log.warning("report %s of %s failed (%s); retrying", kind, att_id, exc)
                await backoff.pause()
        return False

    async def _replay_journal(self) -> None:
        """Before the hello: deliver, in order, the start and output reports an earlier run of
        this agent journaled but never got answered (finish reports ride with the hello)."""
        for e in self.journal.pending():
            if e.kind == "finished":
                continue
            if not await self._deliver(e.attempt_id, e.report()):
                return
            self.journal.ack(e.seq)

    def _hello_body(self) -> tuple[dict[str, Any], list[int]]:
        """The hello: this node's registration and the journaled finish reports (attempts that
        ended while the agent was cut off); returns it and the journal entries it carries."""
        fins = [e for e in self.journal.pending() if e.kind == "finished"][:MAX_HELLO_FINISHED]
        body = HelloRequest.model_validate(
            self._registration()
            | {"finished": [FinishedAttempt(attempt_id=e.attempt_id, **e.body) for e in fins]}
        )
        return body.model_dump(mode="json"), [e.seq for e in fins]


def attempt_vars(item: StartItem) -> dict[str, Any]:
    """What the job's environment is built from (sandbox/env.job_env): the start item, and
    the torchrun-ready variables: the gang's, or for a one-node job this host alone with a
    free port."""
    d = item.model_dump(mode="json")
    if item.spec.get("service"):  # a service replica listens on $PORT, a free port of ours
        d["service_port"] = rendezvous.free_local_port()
    g = item.gang
    if g is not None:
        d["gang_env"] = gang_env(
            rank=g.rank, addrs=g.addrs, master_port=g.master_port, gpus_per_node=g.gpus_per_node
        )
        # collectives between nodes go over the interface of this member's advertise address
        # (the job's own env may name another)
        ifname = rendezvous.interface_of(g.addrs[g.rank])
        own = item.spec.get("env") or {}
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if ifname and var not in own:
                d["gang_env"][var] = ifname
    else:
        d["gang_env"] = gang_env(
            rank=0,
            addrs=["127.0.0.1"],
            master_port=rendezvous.free_local_port(),
            gpus_per_node=len(item.gpu_indices),
        )
    return d


def launch_spec(item: StartItem) -> dict[str, Any]:
    """The spec the runner starts: the job's own, or for ``launcher: ray`` its command wrapped
    in a Ray cluster on the gang (docs/distributed.md)."""
    spec = item.spec
    if spec.get("launcher") != "ray":
        return spec
    return {**spec, "command": ray_command(runner.argv_of(spec), item.gang)}


# where a member's Ray keeps its files: short (Ray's socket paths are limited), the attempt's own
# (removed with the attempt; in the sandbox /tmp is the attempt's anyway)
RAY_TMP = "/tmp/gpunet-ray-{attempt}"


def ray_command(argv: list[str], gang: GangInfo | None) -> list[str]:
    """Rank 0 starts the Ray head on MASTER_PORT with its GPUs, waits until every member's
    node joined, then runs the job's command as the driver (RAY_ADDRESS set); the other ranks
    join as workers and serve until the job ends (the coordinator stops them once the head's
    command finished; a worker whose head went away ends in success, so only the head's
    result counts). Each member's Ray keeps its files in a directory of its own, and its
    daemons are the attempt's processes: they end with it (its cgroup, or its session).
    Ray must be installed where jobs run (the ``gpunet[ray]`` extra)."""
    import shlex

    cmd = " ".join(shlex.quote(a) for a in argv)
    common = (
        'export RAY_ADDRESS="$MASTER_ADDR:$MASTER_PORT" RAY_USAGE_STATS_ENABLED=0; '
        f'tmp="{RAY_TMP.format(attempt="$GPUNET_ATTEMPT_ID")}"; '
    )
    if gang is None or gang.rank == 0:
        wait = (
            "import ray,os,time;ray.init();n=int(os.environ['NNODES']);"
            "t=time.monotonic()\n"
            "while sum(x['Alive'] for x in ray.nodes())<n:\n"
            " assert time.monotonic()-t<120,'ray workers did not join';time.sleep(0.5)"
        )
        script = (
            common + 'ray start --head --node-ip-address="$MASTER_ADDR" --port="$MASTER_PORT" '
            '--num-gpus="$GPUS_PER_NODE" --temp-dir="$tmp" --include-dashboard=false '
            "--disable-usage-stats || exit 1; "
            f"python3 -c {shlex.quote(wait)} || exit 1; "
            f"{cmd}"
        )
    else:
        me = gang.addrs[gang.rank]
        script = (
            common + f'ray start --address="$RAY_ADDRESS" --node-ip-address={shlex.quote(me)} '
            '--num-gpus="$GPUS_PER_NODE" --temp-dir="$tmp" --disable-usage-stats --block; '
            "echo 'gpunet: the Ray head went away; this worker ends'; exit 0"
        )
    return ["/bin/sh", "-c", script]


def report_kind(rep: Report) -> str:
    """The report's name in its path: /v1/agent/attempts/{id}/{kind}."""
    if isinstance(rep, FinishReport):
        return "finished"
    if isinstance(rep, LogReport):
        return "logs"
    return "started"


def take_round(held: collections.deque[Queued]) -> list[Queued]:
    """The reports at the head of ``held`` that one round delivers: at most
    ``MAX_BATCH_REPORTS``, whose start and finish reports weigh at most ``MAX_BATCH_BYTES``
    (the first is always taken)."""
    out: list[Queued] = []
    size = 0
    while held and len(out) < MAX_BATCH_REPORTS:
        rep = held[0][1]
        n = 0 if isinstance(rep, LogReport) else len(rep.model_dump_json()) + 64
        if out and size + n > MAX_BATCH_BYTES:
            break
        out.append(held.popleft())
        size += n
    return out


def delivery_steps(items: list[Queued]) -> list[tuple[bool, list[Queued]]]:
    """The requests that deliver ``items``, in turn: start and finish reports batched
    (``True``), log reports (which a batch does not carry) one request each between the
    batches. Each attempt's reports keep their order; another attempt's output may go ahead
    of a batch."""
    steps: list[list[Queued]] = []
    last: dict[str, int] = {}  # attempt -> the step of its latest report
    for item in items:
        logs = isinstance(item[1], LogReport)
        step = last.get(item[0], 0)
        if step % 2 != logs:  # even steps are batches, odd ones output
            step += 1
        last[item[0]] = step
        while len(steps) <= step:
            steps.append([])
        steps[step].append(item)
    return [(i % 2 == 0, step) for i, step in enumerate(steps) if step]


def batch_body(items: list[Queued]) -> tuple[list[Queued], dict[str, Any]]:
    """A batch's body, and its reports in the order the coordinator takes and answers them
    (every start, then every finish)."""
    starts = [i for i in items if not isinstance(i[1], FinishReport)]
    finishes = [i for i in items if isinstance(i[1], FinishReport)]
    body = Reports(
        started=[StartedAttempt(attempt_id=a, fencing_token=r.fencing_token) for a, r, _ in starts],
        finished=[FinishedAttempt(attempt_id=a, **r.model_dump()) for a, r, _ in finishes],
    )
    return [*starts, *finishes], body.model_dump(mode="json")


def outcomes_of(ordered: list[Queued], answer: ReportsAccepted) -> list[ReportOutcome]:
    """Each batched report's own answer; one per report, in order, or the answer is not one
    to this batch."""
    got = [(o.attempt_id, o.kind) for o in answer.results]
    if got != [(a, report_kind(r)) for a, r, _ in ordered]:
        raise BadAnswer("POST /v1/agent/reports: the answer does not match the reports sent")
    return answer.results


def logs_truncated(answer: Any) -> bool:
    """Whether the coordinator's answer to a log report says it keeps no more output. An
    answer that cannot be read says nothing: the report was accepted all the same."""
    try:
        return LogsAccepted.model_validate(answer).truncated
    except ValidationError:
        return False


def health_reports(readings: list[dict[str, Any]]) -> list[HealthReport]:
    """The backend's readings as the heartbeat carries them; one that is out of the protocol's
    bounds is left out (and logged) rather than fail the heartbeat that renews the lease."""
    out = []
    for r in readings:
        try:
            out.append(HealthReport.model_validate(r))
        except ValidationError as exc:
            log.warning("health reading of GPU %s left out: %s", r.get("index"), exc)
    return out


def minimal_finish(rep: FinishReport) -> FinishReport:
    """A finished report the coordinator refused, cut to what ends the attempt: its fencing
    token, exit code, what ended it (lost, reclaimed) and how long it ran."""
    return FinishReport(
        fencing_token=rep.fencing_token,
        exit_code=rep.exit_code,
        lost=rep.lost,
        reclaimed=rep.reclaimed,
        rendezvous_failed=rep.rendezvous_failed,
        reason="the coordinator refused the full report",
        runtime_s=rep.runtime_s,
    )
