"""gpunet's one exception hierarchy. The API maps each class to an HTTP status."""

from __future__ import annotations


class GpunetError(Exception):
    """Base of every error gpunet raises on purpose."""

    status_code = 400
    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class ValidationFailed(GpunetError):
    """Bad input: names the field and the reason."""

    status_code = 422
    code = "invalid"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field=field)
        self.reason = reason


class Unschedulable(GpunetError):
    """A job that no GPU group of the fleet could ever satisfy."""

    status_code = 422
    code = "unschedulable"


class NotFound(GpunetError):
    status_code = 404
    code = "not_found"


class Unauthorized(GpunetError):
    status_code = 401
    code = "unauthorized"


class Forbidden(GpunetError):
    status_code = 403
    code = "forbidden"


class Conflict(GpunetError):
    """A state change that the current state does not allow."""

    status_code = 409
    code = "conflict"


class StaleFencingToken(Conflict):
    """A report from an attempt that is no longer the job's current one."""

    code = "stale_fencing_token"


class PayloadTooLarge(GpunetError):
    status_code = 413
    code = "too_large"


class QuotaExceeded(GpunetError):
    """An account is over one of its quotas (stored archives, jobs in the queue)."""

    status_code = 429
    code = "quota_exceeded"


class Unavailable(GpunetError):
    """Nothing can answer now (a service with no ready replica and a full queue): retry."""

    status_code = 503
    code = "unavailable"


class BadGateway(GpunetError):
    """A service's replica failed while answering (its node was lost, its process died)."""

    status_code = 502
    code = "bad_gateway"


class TunnelError(BadGateway):
    """A request sent through an agent's tunnel to a replica did not get its answer."""


class NotForwarded(TunnelError):
    """The request never reached the replica (no tunnel from its node, the tunnel closed
    before the request was sent, the replica's port refused it): safe to retry elsewhere."""

    status_code = 503
    code = "not_forwarded"


class ForwardFailed(TunnelError):
    """The exchange broke after the request reached the replica (or may have): it may have
    had effects, so it is not retried."""

    code = "forward_failed"


class MalformedFrame(GpunetError):
    """A tunnel frame that breaks the protocol's encoding or its bounds."""

    code = "malformed_frame"


class StoreUnavailable(Unavailable):
    """A storage service (the checkpoint store's bucket) failed or did not answer: the
    request may succeed later."""
