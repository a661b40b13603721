"""Job use cases: submit, read, cancel, events, logs. Tenancy is enforced here."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gpunet import archive
from gpunet.archive import Limits
from gpunet.core.jobs import (
    ACTIVE_ATTEMPT_STATES,
    AttemptState,
    JobState,
    LostCause,
    StopKind,
    after_lost,
    check_attempt_move,
    check_job_move,
)
from gpunet.core.jobspec import JobSpec
from gpunet.core.scheduling import JobRequest
from gpunet.errors import (
    GpunetError,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unschedulable,
    ValidationFailed,
)
from gpunet.services import billing, gangs
from gpunet.services.auth import Principal, Role
from gpunet.services.fleet import account_ids, job_request
from gpunet.services.pass_cache import cache_for
from gpunet.store.db import Database
from gpunet.store.row_locks import locked
from gpunet.store.tables import Attempt, Blob, BlobOwner, Job, JobEvent, LogChunk
from gpunet.util import new_id, now


def move_job(s: Session, job: Job, dst: JobState, *, reason: str = "", actor: str = "") -> None:
    """Change a job's state as the core table allows, recording a timestamped event."""
    src = JobState(job.state)
    check_job_move(src, dst)
    at = now()
    job.state = dst.value
    if reason:
        job.reason = reason
    if dst in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        job.finished_at = at
    s.add(
        JobEvent(
            job_id=job.id,
            from_state=src.value,
            to_state=dst.value,
            at=at,
            reason=reason,
            actor=actor,
        )
    )


def move_attempt(attempt: Attempt, dst: AttemptState, *, reason: str = "") -> None:
    check_attempt_move(AttemptState(attempt.state), dst)
    attempt.state = dst.value
    if reason:
        attempt.reason = reason
    if dst not in ACTIVE_ATTEMPT_STATES:
        attempt.finished_at = now()


def lose_attempt(
    s: Session, att: Attempt, reason: str, actor: str, cause: LostCause
) -> JobState | None:
    """An attempt died with its host (or lease): re-queue its job while retries remain."""
    move_attempt(att, AttemptState.LOST, reason=reason)
    att.lost_cause = cause.value
    billing.close_charge(s, att, lost=True, reason=reason)
    job = locked(s, Job, att.job_id)
    if job is None or JobState(job.state) not in (JobState.ASSIGNED, JobState.RUNNING):
        return None
    if att.gang_size > 1 and not gangs.is_member_of_current(job, att):
        return None  # a member of an earlier gang of the job: its fate was decided
    move_job(s, job, JobState.LOST, reason=reason, actor=actor)
    nxt = after_lost(job.retries_used, job.max_retries)
    if nxt is JobState.QUEUED:  # a retry is used only when the job is actually re-queued
        job.retries_used += 1
    job.current_attempt_id = None
    move_job(
        s,
        job,
        nxt,
        reason=f"re-queued after a lost attempt: {reason}"
        if nxt is JobState.QUEUED
        else f"lost and no retries left (max_retries={job.max_retries})",
        actor=actor,
    )
    stop_gang(s, att, f"gang member rank {att.rank} on {att.node_id} was lost: {reason}")
    return nxt


def stop_attempt(att: Attempt, kind: StopKind, reason: str) -> None:
    """Ask the attempt's agent to stop it (delivered with its next work poll): a cancel ends
    the job, a preemption re-queues it once the agent confirms (see ``requeue_attempt``)."""
    move_attempt(att, AttemptState.STOPPING, reason=reason)
    att.stop_kind = kind.value


def stop_gang(s: Session, att: Attempt, reason: str) -> list[str]:
    """``att``'s gang ended with it: stop every other member that still runs (their agents
    are woken after the commit). Returns their nodes. A plain attempt has no peers."""
    nodes = []
    for peer in gangs.active_peers(s, att):
        if peer.state == AttemptState.STOPPING.value:
            continue  # already told to stop (a cancel, a preemption of the whole gang)
        stop_attempt(peer, StopKind.GANG, reason)
        nodes.append(peer.node_id)
    gangs.wake_later(s, nodes)
    return nodes


def requeue_attempt(s: Session, att: Attempt, reason: str, actor: str) -> bool:
    """The network stopped the attempt (preempted, reclaimed by the GPU's owner, or the job
    asked to be run again): bill the time it ran, and put its job back in the queue without
    using a retry. Returns whether the job was re-queued (it may have been cancelled)."""
    move_attempt(att, AttemptState.PREEMPTED, reason=reason)
    billing.close_charge(s, att, lost=False)
    job = locked(s, Job, att.job_id)
    if job is None or JobState(job.state) not in (JobState.ASSIGNED, JobState.RUNNING):
        return False
    if att.gang_size > 1 and not gangs.is_member_of_current(job, att):
        return False
    if job.current_attempt_id == att.id or att.gang_size > 1:
        job.current_attempt_id = None
    move_job(s, job, JobState.QUEUED, reason=reason, actor=actor)
    stop_gang(s, att, f"gang member rank {att.rank} on {att.node_id} stopped: {reason}")
    return True


def _visible(s: Session, who: Principal, job_id: str) -> Job:
    job = s.get(Job, job_id)
    # another tenant's job answers exactly like a missing one: no existence leak
    if job is None or (not who.is_admin and job.account_id != who.account_id):
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


WAITING = (JobState.QUEUED.value, JobState.ASSIGNED.value)


def submit(
    db: Database,
    who: Principal,
    spec: JobSpec,
    idempotency_key: str | None,
    *,
    max_queued: int | None = None,
) -> Job:
    """Queue a job (an array: its tasks; the first is answered). ``max_queued``: how many
    queued or assigned jobs one account may have."""
    return submit_many(db, who, [spec], idempotency_key, max_queued=max_queued, batch=False)[0][0]


def submit_many(
    db: Database,
    who: Principal,
    specs: list[JobSpec],
    idempotency_key: str | None,
    *,
    max_queued: int | None = None,
    batch: bool = True,
) -> list[list[Job]]:
    """Queue several jobs in one transaction, all or none: each spec is one job, or the tasks
    of an array (``array: N``). Answers the jobs of each spec. In a ``batch`` an error names
    the spec's index (field ``jobs.3.resources``); a batch's idempotency key covers the whole
    batch (item i is stored under ``KEY#i``)."""
    who.require(Role.CONSUMER)
    for i, sp in enumerate(specs):
        if sp.service is not None:
            where = f"jobs.{i}.service" if batch else "service"
            raise ValidationFailed(
                where, "a service is deployed with POST /v1/services (gpunet services deploy)"
            )
    if not specs:
        return []  # an empty batch queues nothing (and an idempotency key keys nothing)
    keys = [
        None
        if idempotency_key is None
        else (f"{idempotency_key}#{i}" if batch else idempotency_key)
        for i in range(len(specs))
    ]
    with db.transaction() as s:
        # "" is a key like any other: it is stored, so it must be looked up (or the insert
        # collides with the unique index)
        if idempotency_key is not None:
            old = s.scalar(
                select(Job).where(Job.account_id == who.account_id, Job.idempotency_key == keys[0])
            )
            if old is not None:
                return [_same_submit(s, who, k) for k in keys]
        new = sum(sp.array or 1 for sp in specs)
        if max_queued is not None:
            waiting = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.account_id == who.account_id, Job.state.in_(WAITING))
            )
            if (waiting or 0) + new > max_queued:
                raise QuotaExceeded(
                    f"queued_jobs: the account has {waiting} jobs queued or assigned and "
                    f"submits {new}; the quota is {max_queued} (max_queued_jobs): wait for "
                    "some to start",
                    field="queued_jobs",
                )
        at = now()
        out: list[list[Job]] = []
        fits = cache_for(db).capacity(s)  # once for the whole batch
        for i, spec in enumerate(specs):
            # a microsecond apart, in the order sent: policies that order by submit time run
            # a batch, and an array's tasks, in that order
            first = at + timedelta(microseconds=sum(len(js) for js in out))
            try:
                out.append(_add(s, fits, who, spec, keys[i], first))
            except GpunetError as exc:
                if batch:
                    exc.field = f"jobs.{i}" + (f".{exc.field}" if exc.field else "")
                    exc.message = f"jobs.{i}: {exc.message}"
                raise
        return out


def _same_submit(s: Session, who: Principal, key: str | None) -> list[Job]:
    """The jobs an earlier submit with this idempotency key queued (an array: its tasks)."""
    old = s.scalar(select(Job).where(Job.account_id == who.account_id, Job.idempotency_key == key))
    if old is None:
        return []
    if old.array_id is None:
        return [old]
    return list(
        s.scalars(select(Job).where(Job.array_id == old.array_id).order_by(Job.array_index))
    )


def _add(
    s: Session,
    fits: Callable[[JobRequest], str | None],
    who: Principal,
    spec: JobSpec,
    key: str | None,
    at: datetime,
) -> list[Job]:
    """Check one spec and add its job, or its array's tasks (the first holds the key).
    ``fits``: why a job could never run on the fleet (``PassCache.capacity``)."""
    if spec.image is not None and spec.resources.nodes > 1:
        # a container's network is private or none: its members could not reach each other
        raise ValidationFailed(
            "image",
            "a job on several nodes cannot name an image yet (containers get no host "
            "network); run it without one (docs/distributed.md)",
        )
    if spec.workdir is not None:
        owned = s.get(BlobOwner, (spec.workdir, who.account_id)) is not None
        if not owned and not (who.is_admin and s.get(Blob, spec.workdir) is not None):
            raise ValidationFailed("workdir", f"no uploaded archive {spec.workdir!r}")
    owners = account_ids(s, spec.resources.owners)
    unknown = [n for n in spec.resources.owners if n not in owners]
    if unknown:
        raise ValidationFailed("resources.owners", f"no account named {unknown[0]!r}")
    job_id = new_id("job")
    reason = fits(job_request(job_id, who.account_id, spec, owner_ids=owners))
    reason = reason or billing.never_fits(
        s, who.account_id, spec.resources.gpus * spec.resources.nodes
    )
    if reason:
        raise Unschedulable(f"this job can never run on this fleet: {reason}", field="resources")
    stored = spec.model_dump(mode="json")
    array_id = None if spec.array is None else new_id("arr")
    jobs = []
    for index in range(spec.array or 1):
        job = Job(
            id=job_id if index == 0 else new_id("job"),
            account_id=who.account_id,
            name=spec.name,
            spec=stored,
            state=JobState.QUEUED.value,
            priority=spec.priority,
            gpu_count=spec.resources.gpus,
            max_retries=spec.max_retries,
            idempotency_key=key if index == 0 else None,
            created_at=at + timedelta(microseconds=index),
            array_id=array_id,
            array_index=None if array_id is None else index,
        )
        s.add(job)
        s.add(
            JobEvent(
                job_id=job.id,
                from_state=None,
                to_state=JobState.QUEUED.value,
                at=job.created_at,
                reason="submitted" if array_id is None else f"submitted (array {array_id})",
                actor=who.token_id,
            )
        )
        jobs.append(job)
    return jobs


def list_jobs(
    db: Database, who: Principal, state: str | None, limit: int, array_id: str | None = None
) -> list[Job]:
    """The newest jobs first; an array's tasks (``array_id``) in index order."""
    with db.sessions() as s:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if array_id is not None:
            q = select(Job).where(Job.array_id == array_id).order_by(Job.array_index).limit(limit)
        if not who.is_admin:
            q = q.where(Job.account_id == who.account_id)
        if state:
            if state not in {st.value for st in JobState}:
                raise ValidationFailed("state", f"unknown state {state!r}")
            q = q.where(Job.state == state)
        return list(s.scalars(q))


def get_job(db: Database, who: Principal, job_id: str) -> tuple[Job, list[Attempt]]:
    with db.sessions() as s:
        job = _visible(s, who, job_id)
        attempts = list(
            s.scalars(
                select(Attempt)
                .where(Attempt.job_id == job_id)
                .order_by(Attempt.number, Attempt.rank)
            )
        )
        return job, attempts


def events(db: Database, who: Principal, job_id: str) -> list[JobEvent]:
    with db.sessions() as s:
        _visible(s, who, job_id)
        return list(
            s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )


def logs(
    db: Database,
    who: Principal,
    job_id: str,
    after: int,
    limit: int = 1000,
    *,
    rank: int | None = None,
) -> tuple[Job, list[LogChunk]]:
    """A page of the job's output; ``rank``: only that gang rank's (a plain job is rank 0)."""
    with db.sessions() as s:
        job = _visible(s, who, job_id)
        q = select(LogChunk).where(LogChunk.job_id == job_id, LogChunk.id > after)
        if rank is not None:
            q = q.where(
                LogChunk.attempt_id.in_(
                    select(Attempt.id).where(Attempt.job_id == job_id, Attempt.rank == rank)
                )
            )
        rows = list(s.scalars(q.order_by(LogChunk.id).limit(limit)))
        return job, rows


def gang_ranks(db: Database, job_id: str) -> dict[str, int]:
    """Attempt id -> its rank, for the attempts of a job that ran as a gang (else empty)."""
    with db.sessions() as s:
        return {
            aid: r
            for aid, r in s.execute(
                select(Attempt.id, Attempt.rank).where(
                    Attempt.job_id == job_id, Attempt.gang_size > 1
                )
            )
        }


def cancel(db: Database, who: Principal, job_id: str) -> tuple[Job, list[str]]:
    """Cancel a job; returns it and the nodes whose agents must stop an attempt."""
    with db.transaction() as s:
        job = _visible(s, who, job_id)
        return job, _cancel(s, who, job)


def _cancel(
    s: Session,
    who: Principal,
    job: Job,
    reason: str = "cancelled by user",
    stop_reason: str = "job cancelled",
) -> list[str]:
    wake: list[str] = []
    if JobState(job.state) in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        return wake
    move_job(s, job, JobState.CANCELLED, reason=reason, actor=who.token_id)
    if job.current_attempt_id:
        att = s.get(Attempt, job.current_attempt_id)
        # every member of a gang (a plain job has one)
        run = [att] if att is not None and att.gang_size <= 1 else []
        if att is not None and att.gang_size > 1:
            run = gangs.members(s, job.id, att.number)
        for a in run:
            if AttemptState(a.state) in (AttemptState.ASSIGNED, AttemptState.RUNNING):
                stop_attempt(a, StopKind.CANCEL, stop_reason)
                wake.append(a.node_id)
    return wake


def cancel_array(db: Database, who: Principal, array_id: str) -> tuple[int, int, list[str]]:
    """Cancel every task of a job array that has not ended, in one transaction; answers
    (tasks cancelled, tasks in the array, nodes whose agents must stop an attempt)."""
    with db.transaction() as s:
        q = select(Job).where(Job.array_id == array_id).with_for_update()
        if not who.is_admin:  # another tenant's array answers like a missing one
            q = q.where(Job.account_id == who.account_id)
        tasks = list(s.scalars(q))
        if not tasks:
            raise NotFound(f"no job array {array_id!r}", field="array_id")
        ended = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
        live = [j for j in tasks if j.state not in ended]
        wake = [n for j in live for n in _cancel(s, who, j)]
        return len(live), len(tasks), wake


def store_blob(
    db: Database,
    who: Principal,
    data: bytes,
    digest: str,
    max_bytes: int,
    *,
    limits: Limits | None = None,
    quota_bytes: int | None = None,
) -> str:
    """Keep an uploaded working-directory archive under its SHA-256 digest, once its listing
    passed the archive checks (``limits``) and within the account's storage quota."""
    who.require(Role.CONSUMER)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"archive is {len(data)} bytes; the limit is {max_bytes}", field="workdir"
        )
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest and digest != actual:
        raise ValidationFailed("digest", f"does not match the content ({actual})")
    if limits is not None:
        archive.check(data, limits)  # a bomb or an escape is refused before it is stored
    for _ in range(2):  # a concurrent upload of the same bytes may win the insert
        try:
            with db.transaction() as s:
                owned = s.get(BlobOwner, (actual, who.account_id)) is not None
                if not owned and quota_bytes is not None:
                    _check_quota(s, who.account_id, len(data), quota_bytes)
                blob = s.get(Blob, actual)
                if blob is None:
                    s.add(Blob(digest=actual, size=len(data), data=data, created_at=now()))
                    s.flush()
                else:
                    blob.created_at = now()  # used again: its grace before collection restarts
                if not owned:
                    s.add(BlobOwner(digest=actual, account_id=who.account_id))
            break
        except IntegrityError:
            continue
    return actual


def _check_quota(s: Session, account_id: str, size: int, quota: int) -> None:
    used = s.scalar(
        select(func.coalesce(func.sum(Blob.size), 0))
        .join(BlobOwner, BlobOwner.digest == Blob.digest)
        .where(BlobOwner.account_id == account_id)
    )
    if int(used or 0) + size > quota:
        raise QuotaExceeded(
            f"storage_quota: the account's archives take {int(used or 0)} bytes and this one "
            f"{size}; the quota is {quota} bytes (blob_quota_bytes)",
            field="storage_quota",
        )


def job_dict(
    job: Job, attempts: list[Attempt] | None = None, account: str | None = None
) -> dict[str, Any]:
    """A job as the wire shows it; ``account``: its account's name, when the caller read it."""
    from gpunet.util import iso

    d: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "account_id": job.account_id,
        "account": account,
        "priority": job.priority,
        "gpus": job.gpu_count,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "retries_used": job.retries_used,
        "max_retries": job.max_retries,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "spec": job.spec,
        "array_id": job.array_id,
        "array_index": job.array_index,
    }
    if attempts is not None:
        d["attempts"] = [
            {
                "id": a.id,
                "number": a.number,
                "node_id": a.node_id,
                "gpu_ids": a.gpu_ids,
                "state": a.state,
                "exit_code": a.exit_code,
                "reason": a.reason,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "runtime_s": a.runtime_s,  # as its agent measured it: what was billed
                "rank": a.rank,
                "gang_size": a.gang_size,
            }
            for a in attempts
        ]
        cur = next((a for a in reversed(attempts) if a.id == job.current_attempt_id), None)
        d["node_id"] = cur.node_id if cur else None
        d["gpu_ids"] = cur.gpu_ids if cur else []
    return d
