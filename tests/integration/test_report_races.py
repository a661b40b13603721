"""Two deliveries of one attempt's start report at once (the agent's own, and its watchdog's
while the agent could not renew its lease; or a retry after a timed-out request) must not
undo the attempt's finish. The chaos benchmark on SQLite found a start report read the attempt
still assigned, committed after the same attempt's finish, and put the succeeded attempt and
its job back to running: the lease reaper later lost it and the job ran a second time. On
SQLite a report's transaction now takes the write lock before it reads (PostgreSQL locks the
row). Deterministic: the first start report is held between its read and its write."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import auth, coordinator, gpu

from gpunet.services import agents
from gpunet.store.tables import Attempt, Job

HOLD_S = 1.5  # how long the first start report is held after it read the attempt


def test_a_start_report_taken_late_does_not_undo_the_finish(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner")
        node = c.register(provider, [gpu(0)], name="n1")
        user = c.token("consumer", "alice")
        r = c.c.post("/v1/jobs", json={"command": "true"}, headers=auth(user))
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        att = c.next_start(node)

        entered = threading.Event()
        release = threading.Event()
        move = agents.move_attempt
        held = []

        def slow_move(a: Any, state: Any, *args: Any, **kw: Any) -> Any:
            if not held:  # the first start report: it read the attempt assigned
                held.append(a.id)
                entered.set()
                release.wait(HOLD_S)
            return move(a, state, *args, **kw)

        monkeypatch.setattr(agents, "move_attempt", slow_move)
        first: list[int] = []
        t = threading.Thread(
            target=lambda: first.append(c.report(node, att, "started").status_code)
        )
        t.start()
        try:
            assert entered.wait(10)
            # meanwhile: the same start report again, and the attempt's finish
            assert c.report(node, att, "started").status_code == 200
            r = c.report(node, att, "finished", exit_code=0, reason="exit code 0", runtime_s=0.5)
            assert r.status_code == 200, r.text
        finally:
            release.set()
            t.join(20)
        assert first == [200]
        with c.db.sessions() as s:
            a = s.get(Attempt, att["attempt_id"])
            job = s.get(Job, job_id)
            assert a is not None and job is not None
            assert (a.state, a.exit_code) == ("succeeded", 0)
            assert job.state == "succeeded"
