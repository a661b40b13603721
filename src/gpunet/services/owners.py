"""Owners take their GPUs back: what the coordinator records when an agent reports an attempt
it stopped because the GPU's owner is using it (agent/owner.py)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from gpunet.store.tables import Attempt, Gpu


def owner_took_back(s: Session, att: Attempt) -> None:
    """Mark the attempt reclaimed (services/reputation counts it apart from host faults) and
    its GPUs owner-busy at once: the job is re-queued in this transaction and must not be
    placed there again before the next telemetry flush brings the agent's own flag."""
    att.reclaimed = True
    gids = [str(g) for g in att.gpu_ids or []]
    if gids:
        s.execute(update(Gpu).where(Gpu.id.in_(gids)).values(owner_busy=True))
