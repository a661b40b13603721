"""Gangs in the store: a job on several nodes runs as one attempt per member (rank 0..N-1),
all of one ``number`` and fencing token; rank 0's attempt is the job's current one.

A gang is one unit: the first member that ends other than in success decides the job's fate
(services/jobs, services/agents), and every other member is stopped (``StopKind.GANG``).
Nodes whose agents must hear of a stop at once are collected on the session and woken after
the commit (``wake_later``; ``Database.on_commit_wake``)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES
from gpunet.store.db import WAKE_KEY
from gpunet.store.tables import Attempt, Job, Node


def wake_later(s: Session, node_ids: Iterable[str]) -> None:
    """Wake these nodes' work long-polls once the session's transaction commits."""
    s.info.setdefault(WAKE_KEY, set()).update(node_ids)


def is_member_of_current(job: Job, att: Attempt) -> bool:
    """Whether ``att`` belongs to the job's current attempt: it is, or it is a member of
    the same gang (same number) while the job has one."""
    if job.current_attempt_id == att.id:
        return True
    return (
        att.gang_size > 1 and job.current_attempt_id is not None and att.number == job.attempts_made
    )


def members(s: Session, job_id: str, number: int) -> list[Attempt]:
    """The attempts of one gang, rank order."""
    return list(
        s.scalars(
            select(Attempt)
            .where(Attempt.job_id == job_id, Attempt.number == number)
            .order_by(Attempt.rank)
        )
    )


def active_peers(s: Session, att: Attempt) -> list[Attempt]:
    """The other members of ``att``'s gang that still hold their GPUs, locked."""
    if att.gang_size <= 1:
        return []
    active = [st.value for st in ACTIVE_ATTEMPT_STATES]
    return list(
        s.scalars(
            select(Attempt)
            .where(
                Attempt.job_id == att.job_id,
                Attempt.number == att.number,
                Attempt.id != att.id,
                Attempt.state.in_(active),
            )
            .order_by(Attempt.rank)
            .with_for_update()
        )
    )


def addresses(s: Session, job_id: str, number: int) -> list[str]:
    """Every member's advertise address, rank order (a node that declared none: its name)."""
    rows = s.execute(
        select(Node.advertise_addr, Node.name)
        .join(Attempt, Attempt.node_id == Node.id)
        .where(Attempt.job_id == job_id, Attempt.number == number)
        .order_by(Attempt.rank)
    )
    return [addr or name for addr, name in rows]


def ports_in_use(s: Session, node_id: str) -> set[int]:
    """Rendezvous ports of the active gangs whose rank 0 runs on the node."""
    active = [st.value for st in ACTIVE_ATTEMPT_STATES]
    return {
        p
        for p in s.scalars(
            select(Attempt.master_port).where(
                Attempt.node_id == node_id,
                Attempt.rank == 0,
                Attempt.state.in_(active),
                Attempt.master_port.is_not(None),
            )
        )
        if p is not None
    }
