"""Store rows written directly, as the API would leave them: a fleet and a queue for tests
and benchmarks that measure or check the scheduler pass without going through HTTP."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from gpunet.store.tables import Gpu, Job, JobEvent, Node

ONE_GPU = {"name": "t", "command": ["true"], "resources": {"gpus": 1}}


def add_node(s: Session, nid: str, gpus: int, at: datetime, owner: str = "acct_owner") -> None:
    """Node ``nid`` of account ``owner``, online since ``at``, with ``gpus`` simulated
    A100-80GB GPUs at 2 credits an hour."""
    s.add(
        Node(
            id=nid,
            name=nid,
            account_id=owner,
            registered_at=at,
            last_heartbeat_at=at,
            simulated=True,
            accepts_unisolated=True,
        )
    )
    s.flush()
    for i in range(gpus):
        s.add(
            Gpu(
                id=f"{nid}/{i}",
                node_id=nid,
                index=i,
                uuid=f"GPU-{nid}-{i}",
                model="A100-80GB",
                name="Simulated A100-80GB",
                memory_mb=80_000,
                cc_major=8,
                cc_minor=0,
                simulated=True,
                price_per_hour=Decimal("2"),
            )
        )
    s.flush()


def add_queued_job(
    s: Session, jid: str, at: datetime, spec: dict[str, Any] = ONE_GPU, account: str = "acct_user"
) -> None:
    """Job ``jid`` of ``account``, queued at ``at`` with its event, asking one GPU."""
    s.add(
        Job(
            id=jid,
            account_id=account,
            name=spec["name"],
            spec=spec,
            state="queued",
            priority=0,
            gpu_count=1,
            max_retries=0,
            created_at=at,
        )
    )
    s.flush()
    s.add(JobEvent(job_id=jid, from_state=None, to_state="queued", at=at, reason="submitted"))
