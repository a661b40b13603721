"""SQLAlchemy tables of the coordinator's store."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Money(TypeDecorator[Decimal]):
    """An exact amount with 6 decimal places: NUMERIC(20, 6) on PostgreSQL; whole
    micro-units in an INTEGER on SQLite (whose NUMERIC would round through a float)."""

    impl = Numeric(20, 6)
    cache_ok = True
    _SCALE = Decimal(1_000_000)

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, 6))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        d = Decimal(value).quantize(Decimal("0.000001"))
        return int(d * self._SCALE) if dialect.name == "sqlite" else d

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / self._SCALE).quantize(Decimal("0.000001"))
        return Decimal(value).quantize(Decimal("0.000001"))


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # admin | consumer | provider | agent
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    node_id: Mapped[str | None] = mapped_column(String(40), default=None)  # agent tokens only
    # service keys only: the one service the key may call (docs/services.md)
    service_id: Mapped[str | None] = mapped_column(String(40), default=None)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    uses_left: Mapped[int | None] = mapped_column(Integer, default=None)  # join tokens only
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(20), default="online")  # online | offline
    registered_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime]
    agent_version: Mapped[str] = mapped_column(String(40), default="")
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    site: Mapped[str | None] = mapped_column(String(100), default=None)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # how the agent isolates a stranger's job: container | sandbox | none
    isolation: Mapped[str] = mapped_column(String(20), default="none")
    runtimes: Mapped[list[Any]] = mapped_column(default=list)  # e.g. ["podman"]
    # an unisolated node runs only its owner's jobs unless the owner accepts the risk
    accepts_unisolated: Mapped[bool] = mapped_column(Boolean, default=False)
    # where the other members of a gang reach this node (``gpunet agent --advertise-addr``)
    advertise_addr: Mapped[str | None] = mapped_column(String(255), default=None)
    # the ports a gang whose rank 0 runs here may rendezvous on, "LOW-HIGH" (None: the default)
    rendezvous_ports: Mapped[str | None] = mapped_column(String(20), default=None)
    # the version of the row's last change the scheduler sees, set by the store's triggers
    # (migration 0014; services.pass_cache reads the rows changed since its last pass)
    change_version: Mapped[int] = mapped_column(BigInteger, default=0, index=True)


class Gpu(Base):
    __tablename__ = "gpus"
    __table_args__ = (UniqueConstraint("node_id", "index"),)
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(200))
    memory_mb: Mapped[int] = mapped_column(Integer)
    cc_major: Mapped[int] = mapped_column(Integer)
    cc_minor: Mapped[int] = mapped_column(Integer)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    utilization_pct: Mapped[float | None] = mapped_column(Float, default=None)
    memory_used_mb: Mapped[float | None] = mapped_column(Float, default=None)
    temperature_c: Mapped[float | None] = mapped_column(Float, default=None)
    power_w: Mapped[float | None] = mapped_column(Float, default=None)
    # the power the scheduler plans with: the draw smoothed and bucketed (core.power), so it
    # moves only when the draw moves materially (migration 0015; power_w is the live reading)
    planning_power_w: Mapped[float | None] = mapped_column(Float, default=None)
    # when the readings above last changed (the flush writes a GPU only when they do)
    telemetry_at: Mapped[datetime | None] = mapped_column(default=None)
    # the owner is using it (agent/owner.py), from the latest flushed heartbeat
    owner_busy: Mapped[bool] = mapped_column(Boolean, default=False)
    # market: the owner's price per GPU-hour (None: free) and floor for interruptible work
    price_per_hour: Mapped[Decimal | None] = mapped_column(Money(), default=None)
    min_interruptible_price: Mapped[Decimal | None] = mapped_column(Money(), default=None)
    # lifecycle (core/lifecycle.py): healthy/drained above are kept in step with these
    lifecycle_state: Mapped[str] = mapped_column(String(20), default="active")
    tier: Mapped[str | None] = mapped_column(String(20), default=None)
    # the version of the row's last change the scheduler sees, set by the store's triggers
    # (migrations 0014, 0015; services.pass_cache reads the rows changed since its last pass)
    change_version: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    health_status: Mapped[str] = mapped_column(String(20), default="healthy")
    health_reasons: Mapped[list[Any]] = mapped_column(default=list)
    health_at: Mapped[datetime | None] = mapped_column(default=None)
    purchase_price: Mapped[float | None] = mapped_column(Float, default=None)
    purchased_at: Mapped[datetime | None] = mapped_column(default=None)


class GpuEvent(Base):
    """A GPU's timeline: lifecycle moves, health incidents, tier changes."""

    __tablename__ = "gpu_events"
    __table_args__ = (Index("ix_gpu_events_gpu", "gpu_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gpu_id: Mapped[str] = mapped_column(ForeignKey("gpus.id"))
    kind: Mapped[str] = mapped_column(String(20))  # lifecycle | health | tier
    from_state: Mapped[str | None] = mapped_column(String(20), default=None)
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(100), default="")
    at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class GpuBenchmark(Base):
    """One benchmark run of one GPU, scored against its model's reference."""

    __tablename__ = "gpu_benchmarks"
    __table_args__ = (Index("ix_gpu_benchmarks_gpu", "gpu_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    gpu_id: Mapped[str] = mapped_column(ForeignKey("gpus.id"))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(20))  # burn_in | periodic
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    score_pct: Mapped[float | None] = mapped_column(Float, default=None)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)  # values, unmeasured, soak
    scored: Mapped[dict[str, Any]] = mapped_column(default=dict)  # per metric, flags, reasons


class AttemptEnergy(Base):
    """Energy one GPU used for one attempt, as the agent metered it."""

    __tablename__ = "attempt_energy"
    attempt_id: Mapped[str] = mapped_column(ForeignKey("attempts.id"), primary_key=True)
    gpu_id: Mapped[str] = mapped_column(ForeignKey("gpus.id"), primary_key=True, index=True)
    joules: Mapped[float] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(20))  # counter | integrated | mixed
    resets: Mapped[int] = mapped_column(Integer, default=0)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    counter_start_j: Mapped[float | None] = mapped_column(Float, default=None)
    counter_end_j: Mapped[float | None] = mapped_column(Float, default=None)
    at: Mapped[datetime]


class Blob(Base):
    """A content-addressed working-directory archive, stored once whoever uploads it."""

    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class BlobOwner(Base):
    """Which accounts uploaded a blob: only they may use it in a job."""

    __tablename__ = "blob_owners"
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_account", "account_id", "created_at"),
        Index("ix_jobs_array", "array_id", "array_index"),
        UniqueConstraint("account_id", "idempotency_key"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    gpu_count: Mapped[int] = mapped_column(Integer)
    max_retries: Mapped[int] = mapped_column(Integer)
    retries_used: Mapped[int] = mapped_column(Integer, default=0)
    attempts_made: Mapped[int] = mapped_column(Integer, default=0)
    current_attempt_id: Mapped[str | None] = mapped_column(String(40), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # a task of a job array (``array: N`` in the spec): the array's id and this task's index
    array_id: Mapped[str | None] = mapped_column(String(40), default=None)
    array_index: Mapped[int | None] = mapped_column(Integer, default=None)
    # a replica of a service (``service:`` in the spec): the service it serves
    service_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    # the version of the row's last change the scheduler sees, set by the store's triggers
    # (migration 0014; services.pass_cache reads the rows changed since its last pass)
    change_version: Mapped[int] = mapped_column(BigInteger, default=0, index=True)


class ChangeClock(Base):
    """One row: on SQLite, the counter the change-version triggers draw from (migration 0014;
    on PostgreSQL versions are transaction ids and it stays 0)."""

    __tablename__ = "change_clock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(100), default="")


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_node_state", "node_id", "state"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    fencing_token: Mapped[int] = mapped_column(BigInteger)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    gpu_ids: Mapped[list[Any]]
    gpu_indices: Mapped[list[Any]]
    state: Mapped[str] = mapped_column(String(20))
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # stored output, for the cap
    log_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # while stopping: why (core.jobs.StopKind), which decides where its job goes next
    stop_kind: Mapped[str | None] = mapped_column(String(20), default=None)
    # stopped because the GPU's owner took it back (counted apart from host faults)
    reclaimed: Mapped[bool] = mapped_column(Boolean, default=False)
    # a preempted attempt: the job it makes room for (that job waits until the GPUs are free)
    preempted_for: Mapped[str | None] = mapped_column(String(40), default=None)

    # seconds it ran on its agent's monotonic clock (FinishReport.runtime_s): what it is billed,
    # within the coordinator's bounds (core.billing_time)
    runtime_s: Mapped[float | None] = mapped_column(Float, default=None)
    # a lost attempt: why (core.jobs.LostCause)
    lost_cause: Mapped[str | None] = mapped_column(String(20), default=None)
    # a gang (resources.nodes > 1): one attempt per member, all of one ``number`` and fencing
    # token, rank 0 being the job's current attempt; the port rank 0 opens for the gang
    rank: Mapped[int] = mapped_column(Integer, default=0)
    gang_size: Mapped[int] = mapped_column(Integer, default=1)
    master_port: Mapped[int | None] = mapped_column(Integer, default=None)
    # a service replica: passes its readiness probe (as its agent last reported); None: not
    # a replica, or not probed yet
    ready: Mapped[bool | None] = mapped_column(Boolean, default=None)
    # the version of the row's last change the scheduler sees, set by the store's triggers
    # (migration 0014; services.pass_cache reads the rows changed since its last pass)
    change_version: Mapped[int] = mapped_column(BigInteger, default=0, index=True)


class ServiceRow(Base):
    """A service: replicas (jobs with ``service_id``) behind the gateway (docs/services.md)."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("account_id", "name"), Index("ix_services_state", "state"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]]  # the job spec each replica runs, ``service:`` included
    state: Mapped[str] = mapped_column(String(20))  # running | stopped
    model: Mapped[str | None] = mapped_column(String(128), default=None)
    min_replicas: Mapped[int] = mapped_column(Integer)
    max_replicas: Mapped[int] = mapped_column(Integer)
    desired: Mapped[int] = mapped_column(Integer)  # the autoscaler's latest count
    reason: Mapped[str] = mapped_column(Text, default="")  # why ``desired`` is what it is
    # the latest decisions that changed something, newest last: {at, desired, reason}
    decisions: Mapped[list[Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class LogChunk(Base):
    __tablename__ = "log_chunks"
    __table_args__ = (Index("ix_logs_job_seq", "job_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt_id: Mapped[str] = mapped_column(String(40))
    stream: Mapped[str] = mapped_column(String(10))  # stdout | stderr | system
    data: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class LedgerTxn(Base):
    """One ledger transaction; ``ref`` names its cause, so a cause can post only once."""

    __tablename__ = "ledger_txns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ref: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    memo: Mapped[str] = mapped_column(Text, default="")
    attempt_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    created_at: Mapped[datetime]


class LedgerPosting(Base):
    __tablename__ = "ledger_postings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    txn_id: Mapped[int] = mapped_column(ForeignKey("ledger_txns.id"), index=True)
    account: Mapped[str] = mapped_column(String(120), index=True)
    amount: Mapped[Decimal] = mapped_column(Money())


class AttemptCharge(Base):
    """The terms an attempt runs under (fixed when it starts) and what it has been billed."""

    __tablename__ = "attempt_charges"
    attempt_id: Mapped[str] = mapped_column(ForeignKey("attempts.id"), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    payer_account_id: Mapped[str] = mapped_column(String(40), index=True)
    owner_account_id: Mapped[str] = mapped_column(String(40), index=True)
    node_id: Mapped[str] = mapped_column(String(40))
    gpu_prices: Mapped[dict[str, Any]]  # GPU id -> price per hour (a decimal string)
    rate_per_hour: Mapped[Decimal] = mapped_column(Money())
    fee_rate: Mapped[Decimal] = mapped_column(Money())
    held: Mapped[Decimal] = mapped_column(Money())
    billed_seconds: Mapped[int] = mapped_column(Integer, default=0)
    charged: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    owner_share: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    fee: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    created_at: Mapped[datetime]
    settled_at: Mapped[datetime | None] = mapped_column(default=None)


class AccountQuota(Base):
    """Per-account caps: concurrent GPUs and credits spent per calendar month (None: no cap)."""

    __tablename__ = "account_quotas"
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    max_concurrent_gpus: Mapped[int | None] = mapped_column(Integer, default=None)
    monthly_spend: Mapped[Decimal | None] = mapped_column(Money(), default=None)


class Checkpoint(Base):
    """One upload of a job's checkpoint directory: ``pending`` until every file arrived and
    was verified, then ``complete`` in one commit. Only complete ones are listed and restored."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_state", "job_id", "state"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    attempt_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(40), index=True)
    state: Mapped[str] = mapped_column(String(20))  # pending | complete
    files: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


class CheckpointFile(Base):
    """One regular file of a checkpoint: its path in the directory and its content's digest
    (the object in the checkpoint store, per account)."""

    __tablename__ = "checkpoint_files"
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    digest: Mapped[str] = mapped_column(String(80), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[int] = mapped_column(Integer)


class CoordinatorLeader(Base):
    """The one row naming the replica that runs the singleton loops, and its fencing epoch
    (incremented at each election: a deposed leader's writes are refused, docs/replicas.md)."""

    __tablename__ = "coordinator_leader"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    replica: Mapped[str | None] = mapped_column(String, default=None)
    elected_at: Mapped[datetime | None] = mapped_column(default=None)
