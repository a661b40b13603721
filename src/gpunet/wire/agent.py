"""The agent protocol: every request an agent sends and every answer the coordinator gives.

The coordinator validates requests with these models and declares its answers with them; the
agent builds its requests and reads the answers with the same models, so both sides change
together. Requests keep the bounds the coordinator enforces; answers ignore fields they do not
know, so an agent keeps working against a newer coordinator.

This module imports nothing of the coordinator's stack (api, services, store): the agent is a
separate process and loads it on its own.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpunet.core.gangs import parse_ports
from gpunet.core.isolation import MAX_RUNTIMES, Isolation, check_runtimes
from gpunet.core.text import lossless
from gpunet.wire import INT32_MAX, INT64_MAX, Int32, Int64

MAX_LABELS = 64
# site labels that hold numbers (core.energy.site_from_labels)
SITE_NUMBERS = frozenset({"pue", "tariff_per_kwh", "grid_gco2e_per_kwh"})
MAX_GPU_INDEX = 1023  # far more GPUs than one node holds; keeps GPU ids within their column
MAX_REASON_CHARS = 2000  # a finished attempt's reason, a metric's "why not measured"

# a finite reading: these land in float columns flushed for the whole fleet in one batch, so
# one bad value from one agent must be refused here, not fail every node's flush
Reading = Annotated[float | None, Field(None, ge=-1e9, le=1e9, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Answer(BaseModel):
    """Base of the coordinator's answers: fields a newer coordinator adds are ignored."""

    model_config = ConfigDict(extra="ignore")


# ---- registration and hello ------------------------------------------------------------------
class GpuInfo(BaseModel):
    """One GPU as the agent discovered it."""

    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    uuid: str = Field(max_length=100)
    name: str = Field(max_length=200)
    model: str | None = Field(None, max_length=40)  # canonical short name when the agent knows it
    memory_mb: int = Field(gt=0, le=INT32_MAX)
    # major.minor as NVIDIA writes it, e.g. "8.0"; "0.0": unknown (taken from the catalog)
    compute_capability: str = Field("0.0", pattern=r"^[0-9]{1,2}\.[0-9]{1,2}$")
    simulated: bool = False


class Registration(BaseModel):
    """What a node says about itself when it registers (join token) or says hello (its own)."""

    name: str = Field(min_length=1, max_length=200)
    gpus: list[GpuInfo] = Field(max_length=MAX_GPU_INDEX + 1)
    agent_version: str = Field("", max_length=40)
    site: str | None = Field(None, max_length=100)
    labels: dict[str, str] = Field(default_factory=dict, max_length=MAX_LABELS)
    # how the agent isolates jobs, and the container runtimes it can use (e.g. ["podman"])
    isolation: Isolation = Isolation.NONE
    runtimes: list[str] = Field(default_factory=list, max_length=MAX_RUNTIMES)
    # the owner lets strangers' jobs run on this node without isolation
    accepts_unisolated: bool = False
    # where other members of a gang reach this node (a host name or an IP address), and the
    # ports a gang whose rank 0 runs here may use ("LOW-HIGH"; None: core.gangs.DEFAULT_PORTS)
    advertise_addr: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\s,]+$")
    rendezvous_ports: str | None = Field(None, max_length=20)

    @field_validator("rendezvous_ports")
    @classmethod
    def _ports(cls, v: str | None) -> str | None:
        if v is not None:
            lo, hi = parse_ports(v)
            return f"{lo}-{hi}"
        return v

    @field_validator("labels")
    @classmethod
    def _short_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for k, v in labels.items():
            if not 0 < len(k) <= 100:
                raise ValueError(f"label name {k[:20]!r}... must be 1 to 100 characters")
            if len(v) > 200:
                raise ValueError(f"label {k!r} is over 200 characters")
        for k in SITE_NUMBERS & labels.keys():  # read as numbers by core.energy
            try:
                ok = 0 <= float(labels[k]) < 1e6
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"label {k!r} must be a number >= 0, not {labels[k][:20]!r}")
        return labels

    @field_validator("gpus")
    @classmethod
    def _unique_indexes(cls, gpus: list[GpuInfo]) -> list[GpuInfo]:
        seen: set[int] = set()
        for g in gpus:
            if g.index in seen:
                raise ValueError(f"GPU index {g.index} appears more than once")
            seen.add(g.index)
        return gpus

    @field_validator("runtimes")
    @classmethod
    def _runtimes(cls, v: list[str]) -> list[str]:
        return check_runtimes(v)


class Registered(Answer):
    """A new node's id and its own token (shown once)."""

    node_id: str
    token: str
    lease_timeout_s: float = Field(description="renew the lease (heartbeat) within this")


class Hello(Answer):
    """A known node is online again."""

    node_id: str
    lease_timeout_s: float


# ---- heartbeat -------------------------------------------------------------------------------
class GpuTelemetry(BaseModel):
    """One GPU's latest readings; other keys (e.g. energy counters) pass through."""

    model_config = ConfigDict(extra="allow")
    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    utilization_pct: Reading = None
    memory_used_mb: Reading = None
    temperature_c: Reading = None
    power_w: Reading = None
    # the GPU's total-energy counter (joules since the driver loaded): it only grows
    energy_j: float | None = Field(None, allow_inf_nan=False)
    # the GPU's owner is using it (or it is outside the owner's windows): no tenant work
    owner_busy: bool = False


class HealthReport(BaseModel):
    """One GPU's health counters (core.health.HealthReading); None: not measured. Keys this
    coordinator does not know pass through (they are ignored by its rules)."""

    model_config = ConfigDict(extra="allow")
    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    ecc_uncorrected_volatile: Int64 | None = None
    ecc_corrected_volatile: Int64 | None = None
    ecc_uncorrected_aggregate: Int64 | None = None
    ecc_corrected_aggregate: Int64 | None = None
    ecc_sram_uncorrected_aggregate: Int64 | None = None
    retired_pages_sbe: Int64 | None = None
    retired_pages_dbe: Int64 | None = None
    retired_pages_pending: bool | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    row_remap_uncorrectable: Int64 | None = None
    xids: list[Int64] = Field(default_factory=list, max_length=10_000)  # since the last one
    throttle_reasons: Int64 | None = None  # NVML clocks-event reasons bitmask
    temperature_c: Reading = None
    slowdown_temp_c: Reading = None
    nvlink_links_down: Int32 | None = None


class Heartbeat(BaseModel):
    """Renews the node's lease, with the GPUs' readings and the attempts the agent runs."""

    gpus: list[GpuTelemetry] = Field(default_factory=list)
    attempts: list[Annotated[str, Field(max_length=40)]] = Field(
        default_factory=list
    )  # attempts the agent is running
    health: list[HealthReport] = Field(default_factory=list)  # health readings per GPU index
    # service replicas (of ``attempts``) that pass their readiness probe now
    ready: list[Annotated[str, Field(max_length=40)]] = Field(default_factory=list)


class HeartbeatAnswer(Answer):
    stop: list[str] = Field(description="attempts the agent runs that it must stop")
    lease_timeout_s: float


# ---- work ------------------------------------------------------------------------------------
class GangInfo(Answer):
    """This member's place in its gang (a job on several nodes): see docs/distributed.md."""

    rank: int = Field(description="0 is the gang's head: it opens the rendezvous port")
    addrs: list[str] = Field(description="every member's advertise address, rank order")
    master_port: int = Field(description="the port rank 0 opens for the gang (MASTER_PORT)")
    gpus_per_node: int
    rendezvous_timeout_s: float = Field(
        30.0, description="how long members may take to reach rank 0 before the gang fails"
    )


# The work poll's ``have`` and ``stopping``: attempt ids, comma-separated, each at most this
# long (some 160 attempts). An agent holding more leaves them out and is sent everything.
MAX_HELD_CHARS = 3000


class StartItem(Answer):
    """An attempt this node must start."""

    attempt_id: str
    job_id: str
    fencing_token: int = Field(description="goes with every report about this attempt")
    number: int = Field(description="the attempt's number within its job (1, 2, ...)")
    gpu_indices: list[int]
    gpu_ids: list[str]
    spec: dict[str, Any] = Field(description="the job's spec as it was submitted")
    workdir_size: int | None = Field(None, description="bytes of the job's archive, if any")
    max_log_bytes: int | None = Field(None, description="output kept per attempt; send no more")
    gang: GangInfo | None = Field(None, description="a member of a gang: its rank and peers")
    checkpoint: CheckpointRef | None = Field(
        None, description="the job's latest complete checkpoint: restore it before starting"
    )
    array_id: str | None = Field(None, description="the job array this job is a task of")
    array_index: int | None = Field(None, description="the task's index in its array (0..N-1)")


class StopItem(Answer):
    """An attempt this node must stop, or confirm finished if it never started.

    ``kind`` says why (core.jobs.StopKind): ``cancel`` ends the job, ``preempt`` re-queues it.
    The agent sends SIGTERM, waits ``grace_s`` (the job saves its checkpoint), then kills."""

    attempt_id: str
    fencing_token: int
    kind: str = Field("cancel", description="cancel | preempt | gang")
    grace_s: float = Field(5.0, description="seconds between SIGTERM and SIGKILL")
    reason: str = Field("", description="shown in the attempt's log")


class Work(Answer):
    """Attempts to start and to stop; both empty when the long poll ran out."""

    start: list[StartItem] = Field(default_factory=list)
    stop: list[StopItem] = Field(default_factory=list)


# ---- attempt reports -------------------------------------------------------------------------
class Report(BaseModel):
    """An attempt report: fenced by the attempt's current token."""

    fencing_token: int = Field(ge=0, le=INT64_MAX)


class LogLine(BaseModel):
    stream: str = Field(pattern="^(stdout|stderr|system)$")
    data: str

    @field_validator("data")
    @classmethod
    def _storable(cls, v: str) -> str:
        # job output is whatever a job printed: keep it, escaped, rather than fail the report
        return lossless(v)


class LogReport(Report):
    chunks: list[LogLine]


class EnergyUse(BaseModel):
    """What one GPU used during an attempt, as the agent metered it (core.energy.Meter)."""

    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    joules: float = Field(ge=0, allow_inf_nan=False)
    method: str = Field("counter", max_length=20, description="counter | integrated | mixed")
    resets: Int32 = 0
    samples: Int32 = 0
    seconds: Finite = 0.0
    counter_start_j: Finite | None = None
    counter_end_j: Finite | None = None


class FinishReport(Report):
    exit_code: Int32 | None = None
    reason: str = Field("", max_length=MAX_REASON_CHARS)
    lost: bool = False  # the agent stopped it because it could not renew its lease
    # the agent stopped it because the GPU's owner took it back: re-queue the job, bill the time
    reclaimed: bool = False
    # a gang member never started: rank 0's rendezvous port could not be opened or reached
    rendezvous_failed: bool = False
    energy: list[EnergyUse] = Field(default_factory=list, max_length=MAX_GPU_INDEX + 1)
    # seconds the attempt ran, on the agent's monotonic clock (spawn to exit); the bill uses
    # it within the coordinator's bounds (core.billing_time). None: never started, or an
    # older agent
    runtime_s: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)


class FinishedAttempt(FinishReport):
    """An attempt that ended while the agent was cut off, carried by its next hello."""

    attempt_id: str = Field(max_length=40)


MAX_HELLO_FINISHED = 1024


class HelloRequest(Registration):
    """A known node's hello: its registration, and the attempts that finished while it was
    cut off from the coordinator (its journaled finish reports), settled before it is online."""

    finished: list[FinishedAttempt] = Field(default_factory=list, max_length=MAX_HELLO_FINISHED)


class StartedAttempt(Report):
    """An attempt whose processes are running, in a batch of reports."""

    attempt_id: str = Field(max_length=40)


MAX_BATCH_REPORTS = 1024


class Reports(BaseModel):
    """Several attempts' reports in one request (``POST /v1/agent/reports``): each is taken as
    its own request would be (fenced by its token), every start before every finish, and
    answered one by one; one refused report leaves the others standing."""

    started: list[StartedAttempt] = Field(default_factory=list, max_length=MAX_BATCH_REPORTS)
    finished: list[FinishedAttempt] = Field(default_factory=list, max_length=MAX_BATCH_REPORTS)


class ReportOutcome(Answer):
    attempt_id: str
    kind: str = Field(description="started or finished")
    status: int = Field(description="the HTTP status its own request would have had")
    code: str | None = Field(None, description="the error's code, when refused")
    message: str = ""


class Accepted(Answer):
    status: str = "ok"


class ReportsAccepted(Answer):
    results: list[ReportOutcome]


class LogsAccepted(Accepted):
    truncated: bool = Field(description="the attempt's output cap is reached: send no more")


# ---- benchmarks ------------------------------------------------------------------------------
class BenchmarkRun(BaseModel):
    """One benchmark run on one GPU (core.benchmark.BenchmarkResult)."""

    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    values: dict[Annotated[str, Field(max_length=40)], Finite] = Field(
        default_factory=dict, max_length=64
    )  # metric -> measured value
    unmeasured: dict[
        Annotated[str, Field(max_length=40)], Annotated[str, Field(max_length=MAX_REASON_CHARS)]
    ] = Field(default_factory=dict, max_length=64)  # metric -> why not
    soak_runs: Int32 = 0
    soak_errors: Int32 = 0
    simulated: bool = False


class BenchmarkReport(BaseModel):
    kind: str = Field("periodic", pattern="^(burn_in|periodic)$")
    results: list[BenchmarkRun] = Field(max_length=MAX_GPU_INDEX + 1)


class BenchmarkScore(Answer):
    """A GPU's score for the run it reported (core.benchmark.Score)."""

    gpu_id: str
    score_pct: float | None = Field(description="headline matmul rate as % of its reference")
    per_metric: dict[str, dict[str, Any]]
    flagged: bool
    reasons: list[str]
    soak_failed: bool


# ---- checkpoints -----------------------------------------------------------------------------
class CheckpointFile(BaseModel):
    """One regular file of a checkpoint directory (path relative to it, '/'-separated)."""

    path: str = Field(min_length=1, max_length=1024)
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0, le=INT64_MAX)
    mode: int = Field(0o644, ge=0, le=0o7777)


class CheckpointManifest(Report):
    """A checkpoint the agent is about to upload: every file of the directory."""

    files: list[CheckpointFile] = Field(max_length=10_000)


class CheckpointCreated(Answer):
    """The checkpoint is pending: upload the objects it lacks, then commit."""

    checkpoint_id: str
    missing: list[str] = Field(default_factory=list, description="digests the store lacks")


class CheckpointCommitted(Answer):
    """The checkpoint is complete: the job's next attempt starts from it."""

    checkpoint_id: str
    files: int
    size: int


class CheckpointRef(Answer):
    """A complete checkpoint to restore: its files, each fetched by digest."""

    id: str
    files: list[CheckpointFile] = Field(default_factory=list)


StartItem.model_rebuild()
Work.model_rebuild()
