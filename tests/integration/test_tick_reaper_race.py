"""The scheduler pass and the lease reaper racing for one node, made deterministic: the node
goes offline between the plan and its application (or right after it), and no attempt is
ever left on an offline node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import one_queued_job
from sqlalchemy import select

from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES
from gpunet.services import leases, scheduling
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Job, Node


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    with one_queued_job(db_url) as d:
        yield d


def _on_offline_nodes(db: Database) -> list[str]:
    with db.sessions() as s:
        return list(
            s.scalars(
                select(Attempt.id)
                .join(Node, Node.id == Attempt.node_id)
                .where(
                    Node.status == "offline",
                    Attempt.state.in_([st.value for st in ACTIVE_ATTEMPT_STATES]),
                )
            )
        )


def test_node_lost_between_plan_and_apply(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    real_plan = scheduling.plan

    def plan_then_reap(*args: Any, **kw: Any) -> Any:
        p = real_plan(*args, **kw)
        assert [pl.node_id for pl in p.placements] == ["n1"]  # the plan still chose it
        leases.node_lost(db, "n1", "missed heartbeats")  # the reaper runs in between
        return p

    monkeypatch.setattr(scheduling, "plan", plan_then_reap)
    res = scheduling.tick(db, "default")
    assert res.assigned == []
    assert _on_offline_nodes(db) == []
    with db.sessions() as s:
        job = s.get(Job, "job1")
        assert job is not None and job.state == "queued"
        assert list(s.scalars(select(Attempt))) == []


def test_node_lost_right_after_apply_loses_the_attempt(db: Database) -> None:
    res = scheduling.tick(db, "default")
    assert len(res.assigned) == 1
    leases.node_lost(db, "n1", "missed heartbeats")
    assert _on_offline_nodes(db) == []
    with db.sessions() as s:
        att = s.get(Attempt, res.assigned[0])
        job = s.get(Job, "job1")
        assert att is not None and att.state == "lost"
        assert job is not None and job.state == "queued"
    # and the next pass does not place it on the offline node
    assert scheduling.tick(db, "default").assigned == []
