"""What the user-facing routes answer: jobs, attempts, nodes, GPUs, offers, balances, tokens.

The services build plain dicts; the routes declare these models as their ``response_model``, so
FastAPI validates each answer against its model and the OpenAPI document declares its shape.
Every model forbids keys it does not name: a field a service adds without adding it here is a
loud error in the tests, never a field silently dropped from the answer.

Times are ISO 8601 strings in UTC; amounts of credits are decimal strings (never JSON floats).
"""

from __future__ import annotations

import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from gpunet.core.health import Health
from gpunet.core.isolation import Isolation
from gpunet.core.jobs import AttemptState, JobState
from gpunet.core.lifecycle import GpuState

Time = str  # ISO 8601, UTC
Money = str  # a decimal string with up to six places, e.g. "1.500000"
# services.auth.Role's values; spelled here so that the wire contract needs no service code
Role = Literal["admin", "consumer", "provider", "agent", "service"]


class Resource(BaseModel):
    """A model of an answer: exactly the keys it names, no more."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# -- jobs ----------------------------------------------------------------------------------


class Attempt(Resource):
    """One try at running a job on one node's GPUs."""

    id: str
    number: int = Field(description="1 for the first attempt, then 2, 3, ...")
    node_id: str
    gpu_ids: list[str]
    state: AttemptState
    exit_code: int | None
    reason: str
    started_at: Time | None
    finished_at: Time | None
    runtime_s: float | None = Field(
        None, description="seconds it ran, as its agent measured them (what is billed)"
    )
    rank: int = Field(0, description="its rank in its gang (a job on several nodes); 0 else")
    gang_size: int = Field(1, description="members of its gang, all of one number; 1: no gang")


class JobSummary(Resource):
    """A job as listed, submitted or cancelled (without its attempts)."""

    id: str
    name: str
    state: JobState
    account_id: str
    account: str | None = Field(None, description="the account's name")
    priority: int
    gpus: int = Field(description="how many GPUs the job asks for on each node")
    exit_code: int | None
    reason: str = Field(description="why the job is in its state, e.g. a failure's cause")
    retries_used: int
    max_retries: int
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    spec: dict[str, Any] = Field(description="the job spec as it was accepted (see JobSpec)")
    array_id: str | None = Field(None, description="the job array this job is a task of")
    array_index: int | None = Field(None, description="the task's index in its array")


class SubmittedItem(Resource):
    """The jobs one spec of a batch queued: one job, or an array's tasks in index order."""

    ids: list[str]
    array_id: str | None = None


class Submitted(Resource):
    """What a batch submit queued, one item per spec, in the order sent."""

    items: list[SubmittedItem]


class ArrayCancelled(Resource):
    """A job array's cancel: how many of its tasks were cancelled (the others had ended)."""

    array_id: str
    cancelled: int
    tasks: int


class GpuEnergy(Resource):
    """The energy one GPU used for one attempt, as its agent metered it."""

    attempt_id: str
    gpu_id: str
    joules: float
    method: str = Field(description="counter | integrated | mixed")
    resets: int = Field(description="how often the energy counter reset during the attempt")
    seconds: float
    counter_start_j: float | None
    counter_end_j: float | None


class EnergySummary(Resource):
    """GPU energy, facility energy, CO2e and cost. The site factors (``pue`` ... ``sources``)
    are present only when every attempt ran at one site."""

    gpu_joules: float
    gpu_kwh: float
    facility_kwh: float
    co2e_kg: float
    cost: float
    pue: float | None = None
    grid_gco2e_per_kwh: float | None = None
    tariff_per_kwh: float | None = None
    sources: list[str] | None = None


class JobEnergy(EnergySummary):
    """A job's energy, and each GPU's of each attempt."""

    gpus: list[GpuEnergy]


class Job(JobSummary):
    """A job with its attempts, where it runs now and the energy it used."""

    attempts: list[Attempt]
    node_id: str | None = Field(description="the node of the current attempt, if any")
    gpu_ids: list[str] = Field(description="the GPUs of the current attempt (empty: none)")
    energy: JobEnergy


class JobEvent(Resource):
    """One change of a job's state."""

    at: Time
    from_: JobState | None = Field(alias="from", description="null: the job was just submitted")
    to: JobState
    reason: str
    actor: str = Field(description="the token (or loop) that made the change")


class Checkpoint(Resource):
    """A complete checkpoint of a job's $GPUNET_CHECKPOINT_DIR."""

    id: str
    job_id: str
    attempt_id: str = Field(description="the attempt that uploaded it")
    files: int
    size: int = Field(description="bytes of its files")
    created_at: Time
    completed_at: Time | None


class LogChunk(Resource):
    id: int = Field(description="increasing; ask for the chunks after the last one seen")
    attempt_id: str
    stream: str = Field(description="stdout | stderr | system")
    data: str
    rank: int | None = Field(None, description="its attempt's rank, for a gang's output")


class LogPage(Resource):
    """A page of a job's output."""

    job_id: str
    state: JobState
    chunks: list[LogChunk]
    next: int = Field(description="pass as ``after`` for the next page")


class Member(Resource):
    """One member of a gang's placement: its node and GPUs (rank order)."""

    node_id: str
    gpu_ids: list[str]


class Placement(Resource):
    node_id: str
    gpu_ids: list[str]
    members: list[Member] | None = Field(
        None, description="a gang: every member, rank order (rank 0 is node_id/gpu_ids)"
    )


class Explanation(Resource):
    """Why a job is (not) running. A job that is not queued has only ``reason`` beside the
    summary; a queued one has the placement analysis instead."""

    job_id: str
    state: JobState
    summary: str
    reason: str | None = None
    total_gpus: int | None = None
    fitting_gpus: int | None = None
    rejections: dict[str, int] | None = Field(
        None, description="reason -> how many GPUs it rejected (the first failing filter)"
    )
    note: str | None = Field(None, description="what else keeps a placeable job waiting")
    gang: str | None = Field(
        None, description="a gang or a job that names a site: what it needs, what each site has"
    )
    would_place: Placement | None = None
    scores: dict[str, float] | None = Field(None, description="scorer -> weighted score")


class BlobRef(Resource):
    """An uploaded working-directory archive."""

    digest: str = Field(description="sha256:<hex>")
    size: int


# -- the fleet -----------------------------------------------------------------------------


class Node(Resource):
    """A provider's machine, its owner, isolation and GPUs at a glance."""

    id: str
    name: str
    account_id: str
    owner: str | None = Field(description="the owning account's name")
    status: str = Field(description="online | offline")
    simulated: bool
    site: str | None
    agent_version: str
    registered_at: Time
    last_heartbeat_at: Time
    gpus: int
    gpus_busy: int
    gpu_models: list[str]
    reliability: float | None = Field(description="0..1 from the node's history; null: none")
    isolation: Isolation
    runtimes: list[str] = Field(description="container runtimes, e.g. podman")
    accepts_unisolated: bool
    advertise_addr: str | None = Field(
        None, description="where the other members of a multi-node job reach this node"
    )


class Gpu(Resource):
    """A GPU with its live telemetry, lifecycle state, tier and health."""

    id: str
    node_id: str
    index: int
    uuid: str
    model: str
    name: str
    memory_mb: int
    compute_capability: str = Field(description='e.g. "8.0"')
    simulated: bool
    healthy: bool
    drained: bool
    busy: bool
    owner_busy: bool = Field(False, description="its owner is using it: it takes no tenant work")
    owner: str | None = Field(None, description="the name of the account owning its node")
    attempt_id: str | None = Field(description="the attempt holding it (shown to admins only)")
    utilization_pct: float | None
    memory_used_mb: float | None
    temperature_c: float | None
    power_w: float | None
    telemetry_at: Time | None = Field(description="when its readings last changed")
    price_per_hour: Money | None = Field(description="credits per hour; null: free")
    lifecycle_state: GpuState
    tier: str | None
    health_status: Health
    health_reasons: list[str]


class Whoami(Resource):
    role: Role
    account_id: str
    account: str | None = Field(None, description="the account's name")
    node_id: str | None = Field(description="an agent token's node")


# -- the market ----------------------------------------------------------------------------


class Price(Resource):
    """A GPU's prices after a change."""

    gpu_id: str
    model: str
    price_per_hour: Money | None
    min_interruptible_price: Money | None


class PriceSuggestion(Resource):
    gpu_id: str
    model: str
    suggested_price: Money
    reference_price: Money | None
    energy_cost_per_hour: Money
    tier: str | None
    explanation: str


class Grant(Resource):
    """An account's balance after a grant of credits."""

    account: str
    account_id: str
    balance: Money


class Balance(Resource):
    """An account's credits, what its running attempts hold, and its quotas."""

    account: str
    account_id: str
    balance: Money
    held: Money = Field(description="credits held by running attempts, not yet charged")
    max_concurrent_gpus: int | None = Field(description="quota; null: no limit")
    monthly_spend: Money | None = Field(description="quota; null: no limit")


class LedgerCheck(Resource):
    ok: bool
    problems: list[str] = Field(description="each broken invariant; empty: the ledger is sound")


class GpuEarnings(Resource):
    gpu_id: str
    hours_sold: str
    seconds_sold: int
    revenue: Money
    energy_cost: Money
    margin: Money


class Earnings(Resource):
    """What an owner's GPUs earned."""

    account: str
    gpus: list[GpuEarnings]
    total_revenue: Money
    balance: Money


class JobSpend(Resource):
    job_id: str
    attempts: int
    refunded_attempts: int = Field(description="attempts lost to a host fault, not charged")
    gpu_seconds: int
    charged: Money


class Spend(Resource):
    """What an account's jobs cost."""

    account: str
    jobs: list[JobSpend]
    total_charged: Money
    held: Money
    balance: Money


class Offer(Resource):
    """A GPU on the market, with its node's reliability and isolation."""

    gpu_id: str
    node_id: str
    model: str
    memory_gb: float
    compute_capability: str
    price_per_hour: Money | None = Field(description="credits per hour; null: free")
    reliability: float | None
    tier: str | None
    site: str | None
    state: str = Field(description="idle | busy | owner_busy | drained | unhealthy | offline")
    available: bool
    owner_busy: bool = Field(False, description="its owner is using it: it takes no tenant work")
    simulated: bool
    owner: str | None
    isolation: Isolation
    runtimes: list[str]


class ReputationComponent(Resource):
    name: str
    value: float
    weight: float
    explanation: str


class Reputation(Resource):
    """A node's reliability score with its breakdown."""

    node_id: str
    score: float
    components: list[ReputationComponent]
    explanation: str


# -- tokens and accounts -------------------------------------------------------------------


class Token(Resource):
    """A token as listed: never its secret nor its hash."""

    id: str
    role: Role
    account: str
    name: str
    node_id: str | None = Field(description="an agent token's node")
    created_at: Time
    expires_at: Time | None
    uses_left: int | None = Field(description="agents a join token may still register")
    last_used_at: Time | None
    revoked: bool
    revoked_at: Time | None
    state: str = Field(description="live | expired | revoked | used up")


class TokenCreated(Token):
    """A new token: the only answer that carries its secret."""

    token: str = Field(description="the secret; shown this once")


class Account(Resource):
    id: str
    name: str
    roles: list[Role] = Field(description="the roles of its live tokens")
    tokens: int = Field(description="how many live tokens it has")
    nodes: int
    created_at: Time


# -- the simulator -------------------------------------------------------------------------


class SimFleetEntry(Resource):
    model: str
    count: int = Field(description="GPUs of this model in service (not retired or recycled)")


class SimExportJob(Resource):
    """A finished job that ran, as ``gpunet sim export`` turns it into a trace job."""

    id: str
    account_id: str
    priority: int
    state: JobState
    submitted_at: Time
    arrival_s: float = Field(description="seconds after the first exported job was submitted")
    gpu_count: int
    job_class: str | None = Field(description="the spec's job_class, if it set one")
    gpu_model: str | None = Field(description="model of the GPUs its last attempt ran on")
    running_s: float = Field(description="seconds its attempts ran, summed")
    attempts: int
    jct_s: float = Field(description="seconds from submission to its end")


class SimExport(Resource):
    """The network's fleet and job history, for replaying in the simulator."""

    fleet: list[SimFleetEntry]
    jobs: list[SimExportJob]


# -- reading answers -----------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``annotation`` (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def known(model: type[BaseModel], data: Any) -> Any:
    """``data`` with only the keys ``model`` (and its nested models) names."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        value, inner = data[key], _model_in(field.annotation)
        if inner is not None:
            value = (
                [known(inner, v) for v in value] if isinstance(value, list) else known(inner, value)
            )
        out[key] = value
    return out


def parse(model: type[M], data: Any) -> M:
    """Read an answer as ``model``, as a client does: keys it does not know (a newer
    coordinator may answer more) are skipped rather than refused."""
    return model.model_validate(known(model, data))
