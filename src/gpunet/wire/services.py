"""What the service routes answer (docs/services.md): services, their replicas and the
autoscaler's decisions."""

from __future__ import annotations

from pydantic import Field

from gpunet.wire.resources import Resource, Time


class ServiceSummary(Resource):
    """A service as listed, deployed, scaled or stopped."""

    id: str
    name: str
    account: str | None = Field(None, description="the account's name")
    state: str = Field(description="running | stopped")
    model: str | None = Field(description="the model it answers for on /v1/... routes")
    min_replicas: int
    max_replicas: int
    desired: int = Field(description="replicas the autoscaler wants now")
    ready: int = Field(description="replicas passing their readiness probe")
    starting: int = Field(description="replicas placed or starting, not ready yet")
    path: str = Field(description="where clients call it on the coordinator: /services/NAME/")
    reason: str = Field(description="why it wants `desired` replicas: the latest decision")
    created_at: Time
    updated_at: Time


class ServiceReplica(Resource):
    """One replica: a job of the service and its current attempt."""

    job_id: str
    state: str = Field(description="the job's state: queued | assigned | running")
    attempt_id: str | None
    node_id: str | None
    ready: bool | None = Field(description="passes its readiness probe; null: not yet probed ok")
    started_at: Time | None


class ServiceDecision(Resource):
    at: Time
    desired: int
    reason: str


class Autoscaler(Resource):
    """The autoscaler's view on the coordinator that answers (its gateway's samples)."""

    inflight: int = Field(description="requests forwarded and not answered, or waiting, now")
    stable_inflight: float = Field(description="mean in flight over the stable window")
    panic_inflight: float = Field(description="mean in flight over the panic window")
    panic: bool


class ServiceDetail(ServiceSummary):
    """A service with its replicas and its latest decisions, newest last."""

    replicas: list[ServiceReplica]
    decisions: list[ServiceDecision]
    autoscaler: Autoscaler | None
    spec: dict[str, object] = Field(description="the job spec each replica runs")


class ScaleRequest(Resource):
    min: int | None = Field(None, ge=0, le=100)
    max: int | None = Field(None, ge=1, le=100)


class KeyRequest(Resource):
    name: str = Field("", max_length=200, description="a label for the key")
    expires: str | None = Field(None, max_length=20, description="a duration such as 30d")


class ServiceKey(Resource):
    """A service key, in clear: shown once."""

    token: str
    id: str = Field(description="the token's id (gpunet tokens revoke ID)")
    service: str
    expires_at: Time | None
