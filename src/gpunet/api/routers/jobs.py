"""Jobs: submit, list, show, events, logs, cancel, why."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.core.jobspec import JobSpec, parse_spec
from gpunet.errors import ValidationFailed
from gpunet.loops import metering
from gpunet.services import jobs as svc
from gpunet.services.accounts import account_names
from gpunet.services.energy import job_energy
from gpunet.services.scheduling import why
from gpunet.store.tables import Attempt, Job
from gpunet.util import iso
from gpunet.wire import INT32_MAX
from gpunet.wire import resources as R

router = APIRouter(prefix="/v1", tags=["jobs"], responses=wire.AUTHENTICATED)


# the body is read as a plain mapping so that parse_spec names the bad field its own way; the
# document still declares the spec
@router.post(
    "/jobs",
    status_code=201,
    openapi_extra=wire.json_body(JobSpec),
    responses=wire.errors(429),
    response_model=R.JobSummary,
)
async def submit(
    rt: Rt,
    who: Who,
    body: dict[str, Any],
    idempotency_key: str | None = Header(None, min_length=1, max_length=200),
) -> dict[str, Any]:
    """Submit a job spec (the YAML form, as JSON). Rejected at once if it could never run."""
    spec = parse_spec(body)
    job = await run_in_threadpool(
        lambda: svc.submit(
            rt.db, who, spec, idempotency_key, max_queued=rt.settings.max_queued_jobs
        )
    )
    rt.wakeups.wake_scheduler()
    return _with_account(rt, job)


def _with_account(rt: Rt, job: Job, attempts: list[Attempt] | None = None) -> dict[str, Any]:
    """The job's answer with its account's name (listings show names, not ids)."""
    names = account_names(rt.db, {job.account_id})
    return svc.job_dict(job, attempts, account=names.get(job.account_id))


MAX_BATCH = 10_000  # specs in one batch submit


class JobBatch(BaseModel):
    """Several job specs submitted at once: all are queued, or none."""

    jobs: list[JobSpec] = Field(max_length=MAX_BATCH)


def _batch_specs(body: dict[str, Any]) -> list[JobSpec]:
    """Each spec of a batch body, validated; an error names its index (``jobs.3.command``)."""
    items = body.get("jobs")
    if not isinstance(items, list):
        raise ValidationFailed("jobs", "a list of job specs is required")
    if len(items) > MAX_BATCH:
        raise ValidationFailed("jobs", f"at most {MAX_BATCH} specs in one batch")
    specs = []
    for i, item in enumerate(items):
        try:
            specs.append(parse_spec(item))
        except ValidationFailed as exc:
            field = "spec" if exc.field in (None, "spec") else exc.field
            raise ValidationFailed(
                f"jobs.{i}" + ("" if field == "spec" else f".{field}"), exc.reason
            ) from None
    return specs


@router.post(
    "/jobs/batch",
    status_code=201,
    openapi_extra=wire.json_body(JobBatch),
    responses=wire.errors(429),
    response_model=R.Submitted,
)
async def submit_batch(
    rt: Rt,
    who: Who,
    body: dict[str, Any],
    idempotency_key: str | None = Header(None, min_length=1, max_length=190),
) -> dict[str, Any]:
    """Submit several job specs in one request and one transaction: all are queued, or none
    (an error names the spec's index and field). Answers the ids each spec queued."""
    specs = _batch_specs(body)
    done = await run_in_threadpool(
        lambda: svc.submit_many(
            rt.db, who, specs, idempotency_key, max_queued=rt.settings.max_queued_jobs
        )
    )
    rt.wakeups.wake_scheduler()
    return {
        "items": [
            {"ids": [j.id for j in jobs], "array_id": jobs[0].array_id if jobs else None}
            for jobs in done
        ]
    }


@router.get("/jobs", response_model=list[R.JobSummary])
def list_jobs(
    rt: Rt,
    who: Who,
    state: str | None = Query(None, max_length=20),
    limit: int = Query(100, ge=1, le=MAX_BATCH),
    array: str | None = Query(None, max_length=40, description="the tasks of this job array"),
) -> list[dict[str, Any]]:
    """The newest jobs first (at most ``limit``); with ``array``, that array's tasks."""
    jobs = svc.list_jobs(rt.db, who, state, limit, array)
    names = account_names(rt.db, {j.account_id for j in jobs})
    return [svc.job_dict(j, account=names.get(j.account_id)) for j in jobs]


@router.post(
    "/arrays/{array_id}/cancel", responses=wire.errors(404), response_model=R.ArrayCancelled
)
def cancel_array(rt: Rt, who: Who, array_id: str) -> dict[str, Any]:
    """Cancel every task of a job array that has not ended."""
    cancelled, tasks, wake = svc.cancel_array(rt.db, who, array_id)
    rt.wakeups.wake_nodes(sorted(set(wake)))
    rt.wakeups.wake_scheduler()
    return {"array_id": array_id, "cancelled": cancelled, "tasks": tasks}


# the energy summary names its site factors only when there is one site
@router.get("/jobs/{job_id}", response_model=R.Job, response_model_exclude_unset=True)
def show(rt: Rt, who: Who, job_id: str) -> dict[str, Any]:
    job, attempts = svc.get_job(rt.db, who, job_id)
    out = _with_account(rt, job, attempts)
    out["energy"] = job_energy(rt.db, [a.id for a in attempts])
    return out


@router.get("/jobs/{job_id}/events", response_model=list[R.JobEvent])
def events(rt: Rt, who: Who, job_id: str) -> list[dict[str, Any]]:
    return [
        {
            "at": iso(e.at),
            "from": e.from_state,
            "to": e.to_state,
            "reason": e.reason,
            "actor": e.actor,
        }
        for e in svc.events(rt.db, who, job_id)
    ]


@router.get("/jobs/{job_id}/logs", response_model=R.LogPage)
def logs(
    rt: Rt,
    who: Who,
    job_id: str,
    after: int = Query(0, ge=0, le=INT32_MAX),
    rank: int | None = Query(None, ge=0, le=1000, description="only this gang rank's output"),
) -> dict[str, Any]:
    job, chunks = svc.logs(rt.db, who, job_id, after, rank=rank)
    ranks = svc.gang_ranks(rt.db, job_id) if chunks else {}
    return {
        "job_id": job.id,
        "state": job.state,
        "chunks": [
            {
                "id": c.id,
                "attempt_id": c.attempt_id,
                "stream": c.stream,
                "data": c.data,
                "rank": ranks.get(c.attempt_id),
            }
            for c in chunks
        ],
        "next": chunks[-1].id if chunks else after,
    }


@router.post("/jobs/{job_id}/cancel", responses=wire.errors(409), response_model=R.JobSummary)
def cancel(rt: Rt, who: Who, job_id: str) -> dict[str, Any]:
    job, wake = svc.cancel(rt.db, who, job_id)
    rt.wakeups.wake_nodes(wake)
    rt.wakeups.wake_scheduler()
    return _with_account(rt, job)


# a job that is not queued answers without the placement analysis
@router.get("/jobs/{job_id}/why", response_model=R.Explanation, response_model_exclude_unset=True)
def job_why(rt: Rt, who: Who, job_id: str) -> dict[str, Any]:
    """Why a pending job is not running, and how placement would be chosen."""
    job, exp = why(rt.db, who, job_id, rt.settings.policy, metering.terms(rt.settings))
    if exp is None:
        return {
            "job_id": job.id,
            "state": job.state,
            "summary": f"job is {job.state}",
            "reason": job.reason,
        }
    return {
        "job_id": job.id,
        "state": job.state,
        "summary": exp.summary(),
        "total_gpus": exp.total_gpus,
        "fitting_gpus": exp.fitting_gpus,
        "rejections": exp.rejections,
        "note": exp.note,
        "gang": exp.gang or None,
        "would_place": None
        if exp.placed is None
        else {
            "node_id": exp.placed.node_id,
            "gpu_ids": list(exp.placed.gpu_ids),
            "members": [{"node_id": n, "gpu_ids": list(g)} for n, g in exp.placed.members] or None,
        },
        "scores": exp.scores,
    }


@router.post("/blobs", status_code=201, responses=wire.errors(413, 429), response_model=R.BlobRef)
async def upload(
    rt: Rt,
    who: Who,
    request: Request,
    digest: str = Query("", max_length=80, description="sha256:<hex> of the body"),
) -> dict[str, Any]:
    """Upload a working-directory archive (tar.gz); answers its content address."""
    limit = rt.settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        from gpunet.errors import PayloadTooLarge

        raise PayloadTooLarge(f"archive is {length} bytes; the limit is {limit}", field="workdir")
    data = bytearray()
    async for part in request.stream():
        data.extend(part)
        if len(data) > limit:
            break
    d = await run_in_threadpool(
        lambda: svc.store_blob(
            rt.db,
            who,
            bytes(data),
            digest,
            limit,
            limits=rt.settings.archive_limits(),
            quota_bytes=rt.settings.blob_quota_bytes,
        )
    )
    return {"digest": d, "size": len(data)}
