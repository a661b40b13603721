"""Stored archives: collect the ones no unfinished job needs any more."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from gpunet.core.jobs import JobState
from gpunet.store.db import Database
from gpunet.store.tables import Blob, BlobOwner, Job
from gpunet.util import now

FINISHED = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)


def collect(db: Database, grace_s: float) -> list[str]:
    """Delete archives older than the grace (since their last upload) that no job still to
    finish refers to; returns their digests. A job submitted later must upload again."""
    cutoff = now() - timedelta(seconds=grace_s)
    with db.transaction() as s:
        old = set(s.scalars(select(Blob.digest).where(Blob.created_at < cutoff)))
        if not old:
            return []
        needed = set(
            s.scalars(
                select(Job.spec["workdir"].as_string()).where(Job.state.not_in(FINISHED)).distinct()
            )
        )
        gone = sorted(old - needed)
        for i in range(0, len(gone), 500):
            part = gone[i : i + 500]
            s.execute(delete(BlobOwner).where(BlobOwner.digest.in_(part)))
            s.execute(delete(Blob).where(Blob.digest.in_(part)))
        return gone
