"""``gpunet.Client``: the Python SDK (the CLI is built on it)."""

from __future__ import annotations

import io
import os
import ssl
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from gpunet import errors
from gpunet.config import ClientConfig
from gpunet.core.jobspec import JobSpec, parse_spec
from gpunet.errors import ValidationFailed
from gpunet.failover import Coordinators, FailoverTransport, split_urls
from gpunet.tls import client_context, untrusted_message, untrusted_reason
from gpunet.wire import resources as R

_BY_CODE: dict[str, type[errors.GpunetError]] = {
    "not_found": errors.NotFound,
    "unauthorized": errors.Unauthorized,
    "forbidden": errors.Forbidden,
    "conflict": errors.Conflict,
    "stale_fencing_token": errors.StaleFencingToken,
    "too_large": errors.PayloadTooLarge,
    "unschedulable": errors.Unschedulable,
    "quota_exceeded": errors.QuotaExceeded,
}

TERMINAL = {"succeeded", "failed", "cancelled"}


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        code, message, field = err.get("code"), err.get("message", r.text), err.get("field")
    except (ValueError, KeyError, TypeError):
        raise errors.GpunetError(f"HTTP {r.status_code}: {r.text[:300]}") from None
    if code == "invalid":
        f = field or "request"
        raise errors.ValidationFailed(f, str(message).removeprefix(f"{f}: "))
    cls = _BY_CODE.get(str(code), errors.GpunetError)
    raise cls(message, field=field)


def pack_workdir(path: Path) -> bytes:
    """A deterministic tar.gz of a directory (sorted, no owners or times), so equal trees
    get equal content addresses."""
    path = Path(path)
    if not path.is_dir():
        raise errors.ValidationFailed("workdir", f"{path} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for p in sorted(path.rglob("*")):
            if any(part in {".git", "__pycache__", ".venv"} for part in p.relative_to(path).parts):
                continue
            info = tar.gettarinfo(str(p), arcname=str(p.relative_to(path)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if p.is_file():
                with p.open("rb") as fh:
                    tar.addfile(info, fh)
            elif p.is_dir():
                tar.addfile(info)
    return buf.getvalue()


class Client:
    """A connection to a gpunet coordinator.

    ``https`` URLs are verified against the system's certificate store, or against
    ``ca_file`` (a private CA's PEM; default: GPUNET_CA_FILE, then the saved client config).
    ``verify`` overrides both (an ``ssl.SSLContext``, or False to skip verification)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        verify: bool | ssl.SSLContext | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        cfg = None
        if url is None or token is None:
            cfg = ClientConfig.load()
            if cfg is None:
                raise errors.GpunetError(
                    "no coordinator configured: run `gpunet up` or `gpunet login`, or set "
                    "GPUNET_URL and GPUNET_TOKEN"
                )
            url, token = url or cfg.url, token or cfg.token
        # several URLs (``URL1,URL2``): replicas of one network, tried in turn (gpunet.failover)
        self.coordinators = Coordinators(split_urls(url))
        given = ",".join(self.coordinators.urls)
        if verify is None:
            if ca_file is None:
                cfg = cfg or ClientConfig.load()
                saved = cfg.ca_file if cfg and cfg.url.rstrip("/") == given else None
                ca_file = os.environ.get("GPUNET_CA_FILE") or saved
            https = any(u.startswith("https:") for u in self.coordinators.urls)
            verify = client_context(ca_file) if https else True
        self._http = httpx.Client(
            base_url=self.coordinators.urls[0],
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            transport=FailoverTransport(self.coordinators, verify)
            if len(self.coordinators.urls) > 1
            else None,
        )

    @property
    def url(self) -> str:
        """The coordinator in use (of several replicas: the one that answered last)."""
        return self.coordinators.current

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            reason = untrusted_reason(exc)
            if reason is not None:
                raise errors.GpunetError(untrusted_message(self.url, reason)) from None
            urls = ", ".join(self.coordinators.urls)
            raise errors.GpunetError(f"cannot reach the coordinator at {urls}: {exc}") from None
        _raise_for(r)
        return r.json()

    # jobs
    def upload_workdir(self, path: Path) -> str:
        data = pack_workdir(path)
        return str(
            self._req(
                "POST", "/v1/blobs", content=data, headers={"Content-Type": "application/gzip"}
            )["digest"]
        )

    def submit(
        self,
        spec: dict[str, Any] | JobSpec,
        *,
        workdir: Path | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job; ``workdir`` is uploaded and unpacked as the job's working directory."""
        body = (
            spec.model_dump(mode="json", exclude_none=True)
            if isinstance(spec, JobSpec)
            else dict(spec)
        )
        parse_spec(body)  # fail fast, with the same errors the coordinator gives
        if workdir is not None:
            body["workdir"] = self.upload_workdir(workdir)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._req("POST", "/v1/jobs", json=body, headers=headers))

    def submit_many(
        self,
        specs: Sequence[dict[str, Any] | JobSpec],
        *,
        idempotency_key: str | None = None,
    ) -> list[list[str]]:
        """Submit several jobs in one request: all are queued, or none (an error names the
        spec's index, field ``jobs.3.resources``). Answers the job ids of each spec: one, or
        an array's tasks in index order."""
        bodies = []
        for i, spec in enumerate(specs):
            body = (
                spec.model_dump(mode="json", exclude_none=True)
                if isinstance(spec, JobSpec)
                else dict(spec)
            )
            try:
                parse_spec(body)  # fail fast, with the coordinator's errors
            except ValidationFailed as exc:
                field = "" if exc.field in (None, "spec") else f".{exc.field}"
                raise ValidationFailed(f"jobs.{i}{field}", exc.reason) from None
            bodies.append(body)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        out = self._req("POST", "/v1/jobs/batch", json={"jobs": bodies}, headers=headers)
        return [list(item["ids"]) for item in out["items"]]

    # ---- services (docs/services.md) -----------------------------------------------------
    def deploy(
        self, spec: dict[str, Any] | JobSpec, *, workdir: Path | None = None
    ) -> dict[str, Any]:
        """Deploy a service (a spec with a ``service:`` block); ``workdir`` as for submit."""
        body = (
            spec.model_dump(mode="json", exclude_none=True)
            if isinstance(spec, JobSpec)
            else dict(spec)
        )
        parse_spec(body)
        if workdir is not None:
            body["workdir"] = self.upload_workdir(workdir)
        return dict(self._req("POST", "/v1/services", json=body))

    def services(self, stopped: bool = False) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/services", params={"stopped": stopped}))

    def service(self, name: str) -> dict[str, Any]:
        return dict(self._req("GET", f"/v1/services/{name}"))

    def scale_service(
        self, name: str, min_replicas: int | None = None, max_replicas: int | None = None
    ) -> dict[str, Any]:
        body = {"min": min_replicas, "max": max_replicas}
        return dict(self._req("POST", f"/v1/services/{name}/scale", json=body))

    def service_key(self, name: str, label: str = "", expires: str | None = None) -> dict[str, Any]:
        """A key that calls the service ``name`` and nothing else (shown once)."""
        body = {"name": label, "expires": expires}
        return dict(self._req("POST", f"/v1/services/{name}/keys", json=body))

    def stop_service(self, name: str) -> dict[str, Any]:
        return dict(self._req("POST", f"/v1/services/{name}/stop"))

    def jobs(
        self, state: str | None = None, limit: int = 100, array: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest jobs first; ``array``: the tasks of that job array, in index order."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if array:
            params["array"] = array
        return list(self._req("GET", "/v1/jobs", params=params))

    def cancel_array(self, array_id: str) -> dict[str, Any]:
        """Cancel every task of a job array that has not ended."""
        return dict(self._req("POST", f"/v1/arrays/{array_id}/cancel"))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._req("GET", f"/v1/jobs/{job_id}"))

    # Typed accessors: the same answers read as wire.resources models (keys a newer
    # coordinator adds are skipped). The dict methods stay for existing callers.
    def job_model(self, job_id: str) -> R.Job:
        return R.parse(R.Job, self.job(job_id))

    def job_models(
        self, state: str | None = None, limit: int = 100, array: str | None = None
    ) -> list[R.JobSummary]:
        return [R.parse(R.JobSummary, j) for j in self.jobs(state, limit, array)]

    def event_models(self, job_id: str) -> list[R.JobEvent]:
        return [R.parse(R.JobEvent, e) for e in self.events(job_id)]

    def why_model(self, job_id: str) -> R.Explanation:
        return R.parse(R.Explanation, self.why(job_id))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's complete checkpoints, newest first."""
        return list(self._req("GET", f"/v1/jobs/{job_id}/checkpoints"))

    def checkpoint_models(self, job_id: str) -> list[R.Checkpoint]:
        return [R.parse(R.Checkpoint, c) for c in self.checkpoints(job_id)]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._req("GET", f"/v1/jobs/{job_id}/events"))

    def why(self, job_id: str) -> dict[str, Any]:
        return dict(self._req("GET", f"/v1/jobs/{job_id}/why"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._req("POST", f"/v1/jobs/{job_id}/cancel"))

    def logs(self, job_id: str, after: int = 0, rank: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"after": after}
        if rank is not None:
            params["rank"] = rank
        return dict(self._req("GET", f"/v1/jobs/{job_id}/logs", params=params))

    def follow_logs(
        self,
        job_id: str,
        *,
        poll_s: float = 0.3,
        timeout_s: float | None = None,
        rank: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield log chunks until the job ends (and its last logs are read); ``rank``: only
        that gang rank's."""
        after, deadline = 0, None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            page = self.logs(job_id, after, rank)
            yield from page["chunks"]
            after = page["next"]
            if page["state"] in TERMINAL and not page["chunks"]:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise errors.GpunetError(f"timed out following the logs of {job_id}")
            if not page["chunks"]:
                time.sleep(poll_s)

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 600,
        poll_s: float = 0.3,
        states: set[str] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job reaches one of ``states`` (default: a terminal state)."""
        want = states or TERMINAL
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in want:
                return job
            if time.monotonic() > deadline:
                raise errors.GpunetError(
                    f"timed out after {timeout_s:g}s waiting for {job_id} (state {job['state']})"
                )
            time.sleep(poll_s)

    # fleet
    def nodes(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/nodes"))

    def gpus(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/gpus"))

    def node_models(self) -> list[R.Node]:
        return [R.parse(R.Node, n) for n in self.nodes()]

    def gpu_resources(self) -> list[R.Gpu]:
        """The GPUs as models (``gpu_models`` would read as the GPUs' model names)."""
        return [R.parse(R.Gpu, g) for g in self.gpus()]

    def gpu_action(self, gpu_id: str, action: str, reason: str) -> dict[str, Any]:
        """drain | activate | maintain | retire | recycle a GPU, saying why."""
        body = {"action": action, "reason": reason}
        return dict(self._req("POST", f"/v1/gpus/{gpu_id}/lifecycle", json=body))

    def gpu_timeline(self, gpu_id: str) -> dict[str, Any]:
        return dict(self._req("GET", f"/v1/gpus/{gpu_id}/timeline"))

    def energy(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/energy"))

    def record_purchase(
        self,
        price: float,
        purchased_on: str,
        *,
        gpu_id: str | None = None,
        model: str | None = None,
    ) -> list[str]:
        body = {"gpu_id": gpu_id, "model": model, "price": price, "purchased_on": purchased_on}
        return list(self._req("POST", "/v1/gpus-purchases", json=body)["gpu_ids"])

    def tco(self) -> dict[str, Any]:
        return dict(self._req("GET", "/v1/reports/tco"))

    def tiers(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/tiers"))

    def apply_tiers(self, gpu_ids: list[str] | None = None) -> list[dict[str, Any]]:
        return list(self._req("POST", "/v1/tiers/apply", json={"gpu_ids": gpu_ids}))

    def create_token(self, role: str, account: str, name: str = "") -> str:
        """A new token's secret (see ``new_token`` for its expiry, uses and id)."""
        return str(self.new_token(role, account, name)["token"])

    def new_token(
        self,
        role: str,
        account: str,
        name: str = "",
        *,
        expires: str | None = None,
        uses: int | None = None,
    ) -> dict[str, Any]:
        """Issue a token (admin): ``expires`` such as "30d", ``uses`` for join tokens. The
        answer holds the secret (``token``), shown only this once."""
        body = {"role": role, "account": account, "name": name, "expires": expires, "uses": uses}
        return dict(self._req("POST", "/v1/tokens", json=body))

    def tokens(self, account: str | None = None) -> list[dict[str, Any]]:
        """Tokens without their secrets: every one (admin) or the caller's account's."""
        return list(self._req("GET", "/v1/tokens", params={"account": account} if account else {}))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return dict(self._req("DELETE", f"/v1/tokens/{token_id}"))

    def accounts(self) -> list[dict[str, Any]]:
        return list(self._req("GET", "/v1/accounts"))

    def create_account(self, name: str) -> dict[str, Any]:
        return dict(self._req("POST", "/v1/accounts", json={"name": name}))

    def healthz(self) -> dict[str, Any]:
        """The coordinator's status and version (needs no token)."""
        return dict(self._req("GET", "/healthz"))

    def sim_export(self) -> R.SimExport:
        """The fleet and finished jobs, for replaying in the simulator (admin)."""
        return R.parse(R.SimExport, self._req("GET", "/v1/sim/export"))

    def whoami(self) -> dict[str, Any]:
        return dict(self._req("GET", "/v1/whoami"))

    # market (amounts are decimal strings)
    def set_price(
        self,
        price: str | None,
        *,
        gpu_id: str | None = None,
        node_id: str | None = None,
        min_interruptible: str | None = None,
    ) -> list[dict[str, Any]]:
        body = {
            "gpu_id": gpu_id,
            "node_id": node_id,
            "price": price,
            "min_interruptible": min_interruptible,
        }
        return list(self._req("PUT", "/v1/prices", json=body))

    def suggest_price(self, gpu_id: str, tier: str | None = None) -> dict[str, Any]:
        params = {"gpu_id": gpu_id} | ({"tier": tier} if tier else {})
        return dict(self._req("GET", "/v1/prices/suggest", params=params))

    def grant(self, account: str, amount: str, memo: str = "") -> dict[str, Any]:
        body = {"account": account, "amount": amount, "memo": memo}
        return dict(self._req("POST", "/v1/credits/grant", json=body))

    def balance(self, account: str | None = None) -> dict[str, Any]:
        return dict(self._req("GET", "/v1/balance", params={"account": account} if account else {}))

    def balance_model(self, account: str | None = None) -> R.Balance:
        return R.parse(R.Balance, self.balance(account))

    def set_quota(
        self, account: str, max_concurrent_gpus: int | None, monthly_spend: str | None
    ) -> dict[str, Any]:
        body = {
            "account": account,
            "max_concurrent_gpus": max_concurrent_gpus,
            "monthly_spend": monthly_spend,
        }
        return dict(self._req("PUT", "/v1/quotas", json=body))

    def verify_ledger(self) -> dict[str, Any]:
        return dict(self._req("GET", "/v1/ledger/verify"))

    def earnings(self, account: str | None = None) -> dict[str, Any]:
        return dict(
            self._req("GET", "/v1/earnings", params={"account": account} if account else {})
        )

    def spend(self, account: str | None = None) -> dict[str, Any]:
        return dict(self._req("GET", "/v1/spend", params={"account": account} if account else {}))

    def offers(self, query: str | None = None, sort: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("q", query), ("sort", sort)) if v}
        return list(self._req("GET", "/v1/offers", params=params))

    def offer_models(self, query: str | None = None, sort: str | None = None) -> list[R.Offer]:
        return [R.parse(R.Offer, o) for o in self.offers(query, sort)]

    def reputation(self, node_id: str) -> dict[str, Any]:
        return dict(self._req("GET", f"/v1/nodes/{node_id}/reputation"))
