"""A pass applies at most ``max_starts_per_pass`` starts (its transaction stays short on a
deep queue) and the next pass runs at once for the rest: every job starts, no GPU twice."""

from __future__ import annotations

from collections import Counter

from helpers import auth, coordinator, gpu, wait_for
from sqlalchemy import select

from gpunet.store.tables import Attempt


def test_a_deep_plan_starts_over_several_passes_at_once(db_url: str) -> None:
    with coordinator(db_url, scheduler_interval_s=30.0, max_starts_per_pass=2) as co:
        node = co.register(co.token("provider", "prov"), [gpu(i) for i in range(5)])
        user = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/jobs/batch",
            json={"jobs": [{"command": ["true"]}] * 5},
            headers=auth(user),
        )
        assert r.status_code == 201, r.text

        def attempts() -> list[Attempt]:
            with co.db.sessions() as s:
                return list(s.scalars(select(Attempt).where(Attempt.node_id == node.id)))

        # the interval is long: only the wake-ups of the capped passes start all five soon
        wait_for(lambda: len(attempts()) == 5, timeout=10, what="five attempts")
        got = attempts()
        per_pass = Counter(a.created_at for a in got)  # a pass stamps its attempts alike
        assert max(per_pass.values()) <= 2 and len(per_pass) >= 3
        gpus = [g for a in got for g in a.gpu_ids]
        assert len(gpus) == len(set(gpus)) == 5
