"""The job spec users write (YAML or flags), validated with pydantic.

Validation errors become :class:`gpunet.errors.ValidationFailed` naming the field path.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gpunet.catalog import resolve_model
from gpunet.core.isolation import Isolation, check_image
from gpunet.core.jobs import DEFAULT_GRACE_S
from gpunet.errors import ValidationFailed

_CC = re.compile(r"^(\d+)\.(\d+)$")
MAX_OWNERS = 64


class Resources(BaseModel):
    """What hardware a job needs."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(1, ge=1, le=64, description="GPUs on each node")
    nodes: int = Field(1, ge=1, le=64, description="nodes, started together or not at all (a gang)")
    site: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="run only in this site; a gang's nodes always share one",
    )
    min_gpu_memory_gb: float = Field(0, ge=0, description="per GPU, in GB")
    gpu_models: list[str] = Field(default_factory=list, description="allowed models; empty: any")
    min_compute_capability: str | None = Field(None, description='e.g. "8.0"')
    isolation: Isolation = Field(
        Isolation.NONE, description="least isolation accepted: none < sandbox < container"
    )
    owners: list[str] = Field(
        default_factory=list,
        max_length=MAX_OWNERS,
        description="run only on nodes of these accounts (names); empty: any owner",
    )
    cpus: float | None = Field(None, gt=0, le=4096, description="CPU cores requested")
    memory_gb: float | None = Field(None, gt=0, le=65536, description="host memory requested")

    @field_validator("owners")
    @classmethod
    def _owner_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or len(name) > 200 or name != name.strip():
                raise ValueError(f"{name!r} is not an account name")
        return sorted(set(v))

    @field_validator("gpu_models")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        return [resolve_model(m, field="resources.gpu_models") for m in v]

    @field_validator("min_compute_capability")
    @classmethod
    def _cc(cls, v: str | None) -> str | None:
        if v is not None and not _CC.match(str(v)):
            raise ValueError('must look like "8.0"')
        return v

    def compute_capability(self) -> tuple[int, int] | None:
        if self.min_compute_capability is None:
            return None
        m = _CC.match(self.min_compute_capability)
        assert m
        return int(m.group(1)), int(m.group(2))


class Checkpoint(BaseModel):
    """How the job's checkpoint directory ($GPUNET_CHECKPOINT_DIR) is saved and restored."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float | None = Field(
        None, ge=10, le=7 * 86400, description="upload the directory this often; None: only on stop"
    )
    grace_s: float = Field(
        DEFAULT_GRACE_S,
        ge=0,
        le=3600,
        description="seconds between SIGTERM and SIGKILL when the network stops the job",
    )
    keep: int = Field(3, ge=1, le=100, description="complete checkpoints kept per job")


MAX_ARRAY = 10_000  # tasks of one job array
MAX_REPLICAS = 100  # of one service
# a service's name is part of its URL (/services/NAME/...): DNS-label-like
SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class Replicas(BaseModel):
    """How many replicas a service may run; the autoscaler picks within these bounds."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(1, ge=0, le=MAX_REPLICAS, description="0: scale to zero when idle")
    max: int = Field(1, ge=1, le=MAX_REPLICAS)

    @model_validator(mode="after")
    def _order(self) -> Replicas:
        if self.max < self.min:
            raise ValidationFailed("service.replicas.max", "must be at least replicas.min")
        return self


class Readiness(BaseModel):
    """The probe that puts a replica into the gateway's rotation: GET ``path`` answers 2xx."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field("/", max_length=500, description="probed with GET on the replica's port")
    timeout_s: float = Field(
        300, gt=0, le=3600, description="a new replica not ready by then is replaced"
    )
    period_s: float = Field(1.0, ge=0.2, le=60, description="seconds between probes")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in " \r\n#"):
            raise ValueError("must be an absolute path like /healthz")
        return v


class Scaling(BaseModel):
    """The autoscaler's parameters (core/serving/autoscale.py, docs/services.md)."""

    model_config = ConfigDict(extra="forbid")

    target_inflight: float = Field(
        1, gt=0, le=10_000, description="in-flight requests one replica should carry"
    )
    stable_window_s: float = Field(60, ge=2, le=3600)
    panic_window_s: float = Field(6, ge=1, le=3600)
    scale_to_zero_after_s: float = Field(
        300, ge=1, le=7 * 86400, description="with replicas.min 0: idle this long -> 0"
    )
    queue_limit: int = Field(
        100, ge=0, le=100_000, description="requests held while no replica is ready"
    )


class Affinity(BaseModel):
    """Requests with the same value of ``header`` (or of its first ``prefix_chars``) go to the
    same replica while it is not overloaded (core/serving/balance.py)."""

    model_config = ConfigDict(extra="forbid")

    header: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9-]+$")
    prefix_chars: int | None = Field(None, ge=1, le=100_000)


class Service(BaseModel):
    """A long-running endpoint: replicas answer HTTP on ``$PORT`` behind the gateway."""

    model_config = ConfigDict(extra="forbid")

    port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="informational; every replica listens on $PORT, a free port the agent picks",
    )
    replicas: Replicas = Field(default_factory=Replicas)  # type: ignore[arg-type]
    readiness: Readiness = Field(default_factory=Readiness)  # type: ignore[arg-type]
    scaling: Scaling = Field(default_factory=Scaling)  # type: ignore[arg-type]
    model: str | None = Field(
        None, description="answer on the OpenAI-compatible routes (/v1/models, ...) by this name"
    )
    affinity: Affinity | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and not MODEL_NAME.match(v):
            raise ValueError("must be 1-128 characters: letters, digits and ._:/-")
        return v


class JobSpec(BaseModel):
    """A job: what to run and what it needs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("job", min_length=1, max_length=200)
    command: list[str] | str = Field(..., description="argv list, or a shell command string")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = Field(
        None, description="digest of an uploaded working-directory archive (set by the client)"
    )
    resources: Resources = Field(default_factory=Resources)  # type: ignore[arg-type]
    max_retries: int = Field(2, ge=0, le=100, description="re-queues after a lost attempt")
    priority: int = Field(0, ge=-1000, le=1000)
    labels: dict[str, str] = Field(default_factory=dict)
    job_class: str | None = Field(None, description="workload class for throughput-aware placement")
    max_price: Decimal | None = Field(
        None, ge=0, max_digits=14, decimal_places=6, description="credits per GPU-hour, at most"
    )
    min_reliability: float | None = Field(
        None, ge=0, le=1, description="lowest node reputation accepted, 0..1 (gpunet offers)"
    )
    image: str | None = Field(
        None, description="container image to run the command in; implies isolation container"
    )
    checkpoint: Checkpoint = Field(
        default_factory=Checkpoint,  # type: ignore[arg-type]
        description="saving $GPUNET_CHECKPOINT_DIR; the next attempt starts from the latest",
    )
    interruptible: bool = Field(
        False,
        description="may be preempted by other work; pays the owner's interruptible price",
    )
    array: int | None = Field(
        None,
        ge=1,
        le=MAX_ARRAY,
        description="a job array: this many tasks, each with $GPUNET_ARRAY_INDEX (0..N-1)",
    )
    launcher: Literal["none", "ray"] = Field(
        "none",
        description="ray: start a Ray cluster on the job's nodes and run the command on its head",
    )
    service: Service | None = Field(
        None, description="run as a service: replicas answering requests through the gateway"
    )

    @model_validator(mode="after")
    def _service_shape(self) -> JobSpec:
        if self.service is None:
            return self
        if not SERVICE_NAME.match(self.name):
            raise ValidationFailed(
                "name",
                "a service's name is part of its URL: 1-63 lowercase letters, digits and "
                "hyphens, not starting or ending with a hyphen",
            )
        for field, bad, what in (
            ("array", self.array is not None, "a service cannot be a job array"),
            ("resources.nodes", self.resources.nodes > 1, "a replica runs on one node"),
            ("launcher", self.launcher != "none", "a service runs its command directly"),
            ("image", self.image is not None, "services run in the sandbox, not in images"),
        ):
            if bad:
                raise ValidationFailed(field, what)
        s = self.service.scaling
        if s.panic_window_s > s.stable_window_s:
            raise ValidationFailed(
                "service.scaling.panic_window_s", "must be at most scaling.stable_window_s"
            )
        return self

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else check_image(v)

    @model_validator(mode="after")
    def _image_needs_container(self) -> JobSpec:
        r = self.resources
        if self.image is None:
            if r.isolation is Isolation.CONTAINER:
                # a job without an image runs in the node's sandbox, never in a container
                raise ValidationFailed(
                    "resources.isolation", "container isolation needs an image (image: ...)"
                )
            return self
        if "isolation" in r.model_fields_set and r.isolation is not Isolation.CONTAINER:
            raise ValidationFailed(
                "resources.isolation",
                f"a job with an image runs in a container; {r.isolation.value} is too low",
            )
        r.isolation = Isolation.CONTAINER
        return self

    @field_validator("command")
    @classmethod
    def _non_empty(cls, v: list[str] | str) -> list[str] | str:
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("must not be empty")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v

    def argv(self) -> list[str]:
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)


def grace_of(spec: dict[str, Any]) -> float:
    """Seconds between SIGTERM and SIGKILL when the network stops a job of this (stored) spec."""
    ck = spec.get("checkpoint") or {}
    grace = ck.get("grace_s") if isinstance(ck, dict) else None
    return float(grace) if isinstance(grace, int | float) else DEFAULT_GRACE_S


def _loc(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"]) or "spec"


def parse_spec(data: Any) -> JobSpec:
    """Validate a decoded spec; raise ValidationFailed naming the first bad field."""
    if not isinstance(data, dict):
        raise ValidationFailed("spec", "a job spec must be a mapping of fields")
    try:
        return JobSpec.model_validate(data)
    except ValidationFailed:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ValidationFailed):
            raise ctx_err from None
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise ValidationFailed(_loc(err), msg) from None
