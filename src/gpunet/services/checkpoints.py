"""Checkpoints: an attempt uploads its checkpoint directory (manifest, missing objects, one
commit); the job's next attempt restores the latest complete one; each job keeps its newest
``checkpoint.keep``; objects no checkpoint refers to are collected."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gpunet.core.checkpoints import FileEntry, ManifestError, check_manifest, to_prune
from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES, TERMINAL_JOB_STATES
from gpunet.errors import Conflict, NotFound, QuotaExceeded, ValidationFailed
from gpunet.services.agents import _fenced, _own_node
from gpunet.services.auth import Principal
from gpunet.services.checkpoint_store import CheckpointStore, object_key
from gpunet.services.jobs import _visible
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Checkpoint, CheckpointFile, Job
from gpunet.util import new_id, now
from gpunet.wire.agent import CheckpointFile as WireFile
from gpunet.wire.agent import CheckpointManifest, CheckpointRef

log = logging.getLogger("gpunet.checkpoints")

PENDING = "pending"
COMPLETE = "complete"


@dataclass(frozen=True)
class Limits:
    """The store's bounds: files per checkpoint, bytes of objects per account."""

    max_files: int
    quota_bytes: int


def _stored_by(s: Session, account_id: str, leave_out: set[str]) -> dict[str, int]:
    """Digest -> size of every object the account's checkpoints refer to (but those named)."""
    q = (
        select(CheckpointFile.digest, CheckpointFile.size, CheckpointFile.checkpoint_id)
        .join(Checkpoint, Checkpoint.id == CheckpointFile.checkpoint_id)
        .where(Checkpoint.account_id == account_id)
    )
    return {d: size for d, size, ck in s.execute(q) if ck not in leave_out}


def _drop(s: Session, ids: list[str]) -> None:
    if ids:
        s.execute(delete(CheckpointFile).where(CheckpointFile.checkpoint_id.in_(ids)))
        s.execute(delete(Checkpoint).where(Checkpoint.id.in_(ids)))


def create(
    db: Database,
    who: Principal,
    attempt_id: str,
    man: CheckpointManifest,
    store: CheckpointStore,
    limits: Limits,
) -> tuple[str, list[str]]:
    """A pending checkpoint for the attempt's job; answers its id and the digests the store
    lacks. An earlier pending checkpoint of the job (a torn upload) is dropped."""
    entries = [FileEntry(f.path, f.digest, f.size, f.mode) for f in man.files]
    try:
        check_manifest(entries, limits.max_files)
    except ManifestError as exc:
        raise ValidationFailed(exc.field, exc.reason) from None
    with db.transaction() as s:
        att, job = _fenced(s, who, attempt_id, man.fencing_token)
        torn = list(
            s.scalars(
                select(Checkpoint.id).where(
                    Checkpoint.job_id == job.id, Checkpoint.state == PENDING
                )
            )
        )
        _drop(s, torn)
        stored = _stored_by(s, job.account_id, set(torn))
        new = {e.digest: e.size for e in entries if e.digest not in stored}
        used, adding = sum(stored.values()), sum(new.values())
        if used + adding > limits.quota_bytes:
            raise QuotaExceeded(
                f"checkpoint_quota: the account's checkpoints take {used} bytes and this one "
                f"adds {adding}; the quota is {limits.quota_bytes} bytes "
                "(checkpoint_quota_bytes)",
                field="checkpoint_quota",
            )
        ck = Checkpoint(
            id=new_id("ckpt"),
            job_id=job.id,
            attempt_id=att.id,
            account_id=job.account_id,
            state=PENDING,
            files=len(entries),
            size=sum(e.size for e in entries),
            created_at=now(),
        )
        s.add(ck)
        s.flush()
        s.add_all(
            CheckpointFile(
                checkpoint_id=ck.id, path=e.path, digest=e.digest, size=e.size, mode=e.mode
            )
            for e in entries
        )
        digests = sorted({e.digest for e in entries})
        missing = [d for d in digests if not store.has(object_key(job.account_id, d))]
        return ck.id, missing


def _pending(s: Session, att: Attempt, checkpoint_id: str) -> Checkpoint:
    ck = s.get(Checkpoint, checkpoint_id)
    if ck is None or ck.attempt_id != att.id:
        raise NotFound(f"no checkpoint {checkpoint_id!r} of this attempt", field="checkpoint_id")
    if ck.state != PENDING:
        raise Conflict(f"checkpoint {checkpoint_id} is {ck.state}", field="checkpoint_id")
    return ck


def object_target(
    db: Database, who: Principal, attempt_id: str, checkpoint_id: str, digest: str, token: int
) -> tuple[str, int]:
    """Where an uploaded object goes (its store key) and its size as the manifest said: only
    objects of the attempt's own pending checkpoint are taken."""
    with db.transaction() as s:
        att, job = _fenced(s, who, attempt_id, token)
        ck = _pending(s, att, checkpoint_id)
        size = s.scalar(
            select(CheckpointFile.size)
            .where(CheckpointFile.checkpoint_id == ck.id, CheckpointFile.digest == digest)
            .limit(1)
        )
        if size is None:
            raise NotFound(f"checkpoint {ck.id} has no file {digest!r}", field="digest")
        return object_key(job.account_id, digest), int(size)


def commit(
    db: Database, who: Principal, attempt_id: str, checkpoint_id: str, token: int, store: Any
) -> tuple[Checkpoint, list[str]]:
    """Make the checkpoint complete, once every object it names is stored; then prune the
    job's complete checkpoints to its ``checkpoint.keep``. Returns it and the pruned ids."""
    with db.transaction() as s:
        att, job = _fenced(s, who, attempt_id, token)
        ck = _pending(s, att, checkpoint_id)
        digests = set(
            s.scalars(select(CheckpointFile.digest).where(CheckpointFile.checkpoint_id == ck.id))
        )
        missing = sorted(d for d in digests if not store.has(object_key(job.account_id, d)))
        if missing:
            raise Conflict(
                f"missing: {len(missing)} object(s) not uploaded yet, e.g. {missing[0]}",
                field="missing",
            )
        ck.state, ck.completed_at = COMPLETE, now()
        s.flush()
        keep = int(((job.spec.get("checkpoint") or {}).get("keep")) or 3)
        newest_first = list(
            s.scalars(
                select(Checkpoint.id)
                .where(Checkpoint.job_id == job.id, Checkpoint.state == COMPLETE)
                .order_by(Checkpoint.completed_at.desc(), Checkpoint.created_at.desc())
            )
        )
        pruned = to_prune(newest_first, keep)
        _drop(s, pruned)
        return ck, pruned


def _files(s: Session, checkpoint_id: str) -> list[WireFile]:
    rows = s.scalars(
        select(CheckpointFile)
        .where(CheckpointFile.checkpoint_id == checkpoint_id)
        .order_by(CheckpointFile.path)
    )
    return [WireFile(path=f.path, digest=f.digest, size=f.size, mode=f.mode) for f in rows]


def latest(s: Session, job_id: str) -> CheckpointRef | None:
    """The job's newest complete checkpoint, for its next attempt to restore."""
    ck = s.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.state == COMPLETE)
        .order_by(Checkpoint.completed_at.desc(), Checkpoint.created_at.desc())
        .limit(1)
    ).first()
    return None if ck is None else CheckpointRef(id=ck.id, files=_files(s, ck.id))


def with_any(s: Session, job_ids: Iterable[str]) -> set[str]:
    """Those of ``job_ids`` that have a complete checkpoint, in one query (most jobs have
    none: their first attempt is about to start)."""
    ids = set(job_ids)
    if not ids:
        return set()
    q = select(Checkpoint.job_id).where(Checkpoint.job_id.in_(ids), Checkpoint.state == COMPLETE)
    return set(s.scalars(q.distinct()))


def listing(db: Database, who: Principal, job_id: str) -> list[dict[str, Any]]:
    """A job's complete checkpoints, newest first (torn uploads are never listed)."""
    from gpunet.util import iso

    with db.sessions() as s:
        job = _visible(s, who, job_id)
        rows = s.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job.id, Checkpoint.state == COMPLETE)
            .order_by(Checkpoint.completed_at.desc(), Checkpoint.created_at.desc())
        )
        return [
            {
                "id": c.id,
                "job_id": c.job_id,
                "attempt_id": c.attempt_id,
                "files": c.files,
                "size": c.size,
                "created_at": iso(c.created_at),
                "completed_at": iso(c.completed_at) if c.completed_at else None,
            }
            for c in rows
        ]


def readable(db: Database, who: Principal, digest: str) -> str:
    """The store key of an object a node may read: one of a complete checkpoint of a job
    it holds an active attempt of. Anything else answers as missing."""
    with db.sessions() as s:
        node = _own_node(s, who)
        account = s.scalar(
            select(Job.account_id)
            .join(Attempt, Attempt.job_id == Job.id)
            .join(Checkpoint, Checkpoint.job_id == Job.id)
            .join(CheckpointFile, CheckpointFile.checkpoint_id == Checkpoint.id)
            .where(
                Attempt.node_id == node.id,
                Attempt.state.in_([a.value for a in ACTIVE_ATTEMPT_STATES]),
                Checkpoint.state == COMPLETE,
                CheckpointFile.digest == digest,
            )
            .limit(1)
        )
        if account is None:
            raise NotFound(f"no checkpoint object {digest!r} for this node", field="digest")
        return object_key(account, digest)


def collect(
    db: Database,
    store: CheckpointStore,
    *,
    pending_grace_s: float,
    retention_s: float,
    object_grace_s: float,
) -> tuple[int, int]:
    """Drop torn uploads older than ``pending_grace_s``, the checkpoints of jobs finished
    more than ``retention_s`` ago, then delete objects no checkpoint refers to that have
    not been used for ``object_grace_s``. Returns (checkpoints dropped, objects deleted)."""
    t = now()
    with db.transaction() as s:
        torn = list(
            s.scalars(
                select(Checkpoint.id).where(
                    Checkpoint.state == PENDING,
                    Checkpoint.created_at < t - timedelta(seconds=pending_grace_s),
                )
            )
        )
        done = list(
            s.scalars(
                select(Checkpoint.id)
                .join(Job, Job.id == Checkpoint.job_id)
                .where(
                    Job.state.in_([st.value for st in TERMINAL_JOB_STATES]),
                    Job.finished_at < t - timedelta(seconds=retention_s),
                )
            )
        )
        _drop(s, torn + done)
    return len(torn) + len(done), collect_objects(db, store, object_grace_s)


def collect_objects(db: Database, store: CheckpointStore, grace_s: float) -> int:
    """Delete stored objects that no checkpoint (pending or complete) refers to. An object is
    spared while fresh: a manifest that finds it stored marks it used, and a commit checks
    again that every object is there, so a race with a new checkpoint costs an upload, never
    a complete checkpoint."""
    with db.sessions() as s:
        used = {
            f"{a}/{d}"
            for a, d in s.execute(
                select(Checkpoint.account_id, CheckpointFile.digest)
                .join(CheckpointFile, CheckpointFile.checkpoint_id == Checkpoint.id)
                .distinct()
            )
        }
    gone = 0
    for key in list(store.keys(grace_s)):
        if key not in used:
            store.delete(key)
            gone += 1
    return gone
