"""The scheduler pass and the lease reaper racing for one node, made deterministic: the node
goes offline between the plan and its application (or right after it), and no attempt is
ever left on an offline node."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES
from gpunet.services import leases, scheduling
from gpunet.store.db import Database
from gpunet.store.tables import Account, Attempt, Gpu, Job, JobEvent, Node
from tests.conftest import migrated


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    migrated(db_url)
    d = Database(db_url)
    at = datetime.now(UTC)
    with d.transaction() as s:
        s.add(Account(id="acct_o", name="owner", created_at=at))
        s.add(Account(id="acct_u", name="user", created_at=at))
        s.flush()
        s.add(
            Node(
                id="n1",
                name="n1",
                account_id="acct_o",
                registered_at=at,
                last_heartbeat_at=at,
                accepts_unisolated=True,
            )
        )
        s.flush()
        s.add(
            Gpu(
                id="n1/0",
                node_id="n1",
                index=0,
                uuid="GPU-0",
                model="A100-80GB",
                name="A100",
                memory_mb=80_000,
                cc_major=8,
                cc_minor=0,
            )
        )
        s.add(
            Job(
                id="job1",
                account_id="acct_u",
                name="j",
                spec={"command": ["true"]},
                state="queued",
                gpu_count=1,
                max_retries=3,
                created_at=at,
            )
        )
        s.flush()
        s.add(JobEvent(job_id="job1", from_state=None, to_state="queued", at=at))
    yield d
    d.dispose()


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
