"""Reports that arrive late: a lost attempt's success is kept while its job's retry has not
started, else recorded as a discarded duplicate; a hello carries the attempts that finished
while the agent was cut off; the bill is the agent's measured running time within bounds."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal as D
from typing import Any

from helpers import Coordinator, Node, auth, coordinator, gpu, wait_for

from gpunet.core.ledger import charge_for, metered_seconds
from gpunet.services.leases import node_lost
from gpunet.store.tables import Attempt, AttemptCharge
from gpunet.util import utc


def _market(c: Coordinator, name: str, gpus: int = 1) -> tuple[str, Node]:
    provider = c.token("provider", f"owner-{name}")
    node = c.register(provider, [gpu(i) for i in range(gpus)], name=name)
    r = c.c.put("/v1/prices", json={"node_id": node.id, "price": "3.6"}, headers=auth(provider))
    assert r.status_code == 200, r.text
    return provider, node


def _user(c: Coordinator) -> str:
    user = c.token("consumer", "alice")
    r = c.c.post(
        "/v1/credits/grant", json={"account": "alice", "amount": "50"}, headers=auth(c.admin)
    )
    assert r.status_code == 201, r.text
    return user


def _backdate(c: Coordinator, attempt_id: str, seconds: float) -> None:
    """Pretend the attempt was assigned and started ``seconds`` ago."""
    with c.db.transaction() as s:
        att = s.get(Attempt, attempt_id)
        assert att is not None
        att.created_at = utc(att.created_at) - timedelta(seconds=seconds)  # type: ignore[operator]
        if att.started_at is not None:
            att.started_at = utc(att.started_at) - timedelta(seconds=seconds)  # type: ignore[operator]


def _charge(c: Coordinator, attempt_id: str) -> AttemptCharge:
    with c.db.sessions() as s:
        ch = s.get(AttemptCharge, attempt_id)
    assert ch is not None
    return ch


def _states(c: Coordinator, user: str, job_id: str) -> list[str]:
    return [a["state"] for a in c.job(user, job_id)["attempts"]]


def _verify(c: Coordinator) -> None:
    r = c.c.get("/v1/ledger/verify", headers=auth(c.admin))
    assert r.json() == {"ok": True, "problems": []}, r.text


def _late_metric(c: Coordinator, outcome: str) -> float:
    text = c.c.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(f'gpunet_late_successes_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


def _lose(c: Coordinator, node: Node) -> None:
    """The node's lease lapses (as the reaper would judge it)."""
    node_lost(c.db, node.id, f"node {node.id} missed heartbeats")


def _start(c: Coordinator, node: Node) -> dict[str, Any]:
    att = c.next_start(node)
    assert c.report(node, att, "started").status_code == 200
    return att


def _start_any(c: Coordinator, nodes: list[Node]) -> tuple[Node, dict[str, Any]]:
    """The node the scheduler handed the next attempt to, and that attempt (started)."""

    def poll() -> tuple[Node, dict[str, Any]] | None:
        for node in nodes:
            found = c.work(node)
            if found["start"]:
                return node, found["start"][0]
        time.sleep(0.05)
        return None

    node, att = wait_for(poll, poll=0, what="an attempt on any node")
    assert c.report(node, att, "started").status_code == 200
    return node, att


def test_a_late_success_before_the_retry_started_is_kept(db_url: str) -> None:
    with coordinator(db_url) as c:
        _, a = _market(c, "a")
        user = _user(c)
        job = c.submit(user, {"command": ["true"], "max_retries": 3})
        first = _start(c, a)
        _backdate(c, first["attempt_id"], 60)
        _lose(c, a)
        assert c.job(user, job["id"])["state"] == "queued"
        assert _charge(c, first["attempt_id"]).outcome == "lost"  # refunded
        # the finished process's report arrives late: the retry has not been assigned
        r = c.report(a, first, "finished", exit_code=0, runtime_s=5.3)
        assert r.status_code == 200, r.text
        shown = c.job(user, job["id"])
        assert shown["state"] == "succeeded" and shown["exit_code"] == 0
        assert _states(c, user, job["id"]) == ["succeeded"]
        ch = _charge(c, first["attempt_id"])
        assert ch.billed_seconds == 5 and ch.charged == charge_for(5, D("3.6"))
        assert ch.outcome == "succeeded" and ch.settled_at is not None
        assert _late_metric(c, "kept") == 1.0
        _verify(c)

        # again with a retry assigned (not started) on another node: it is cancelled
        _, b = _market(c, "b")
        job2 = c.submit(user, {"command": ["true"], "max_retries": 3})
        # only b is online now: the first attempt goes there, then b is lost and a is back
        first2 = _start(c, b)
        _backdate(c, first2["attempt_id"], 60)
        c.c.post(
            "/v1/agent/hello",
            json={"name": "a", "gpus": [gpu(0)], "accepts_unisolated": True},
            headers=a.headers,
        )
        _lose(c, b)
        retry = c.next_start(a)
        assert c.job(user, job2["id"])["state"] == "assigned"
        r = c.report(b, first2, "finished", exit_code=0, runtime_s=7.0)
        assert r.status_code == 200, r.text
        assert c.job(user, job2["id"])["state"] == "succeeded"
        assert _states(c, user, job2["id"]) == ["succeeded", "cancelled"]
        assert _charge(c, first2["attempt_id"]).billed_seconds == 7
        retry_charge = _charge(c, retry["attempt_id"])
        assert retry_charge.charged == 0 and retry_charge.settled_at is not None
        # the retry's own reports are refused now, and its agent is told to stop it
        assert c.report(a, retry, "started").status_code == 409
        assert c.heartbeat(a, [retry["attempt_id"]])["stop"] == [retry["attempt_id"]]
        assert _late_metric(c, "kept") == 2.0
        bal = c.c.get("/v1/balance", headers=auth(user)).json()
        assert D(bal["balance"]) == D(50) - charge_for(5, D("3.6")) - charge_for(7, D("3.6"))
        assert D(bal["held"]) == 0
        _verify(c)


def test_after_the_retry_started_a_late_success_is_a_discarded_duplicate(db_url: str) -> None:
    with coordinator(db_url) as c:
        # both nodes priced before any work exists (a node seen unpriced would run it free)
        _, one = _market(c, "a")
        _, two = _market(c, "b")
        user = _user(c)
        job = c.submit(user, {"command": ["true"], "max_retries": 3})
        a, first = _start_any(c, [one, two])
        b = two if a is one else one
        _backdate(c, first["attempt_id"], 60)
        _lose(c, a)
        retry = _start(c, b)
        r = c.report(a, first, "finished", exit_code=0, runtime_s=5.0)
        assert r.status_code == 200, r.text
        assert c.job(user, job["id"])["state"] == "running"  # the retry goes on
        events = c.events(user, job["id"])
        dup = [e for e in events if "duplicate discarded" in e["reason"]]
        assert len(dup) == 1 and first["attempt_id"] in dup[0]["reason"]
        assert _late_metric(c, "discarded") == 1.0
        # the same report again (its answer was lost) is answered, not counted twice
        assert c.report(a, first, "finished", exit_code=0, runtime_s=5.0).status_code == 200
        assert _late_metric(c, "discarded") == 1.0
        assert len([e for e in c.events(user, job["id"]) if "duplicate" in e["reason"]]) == 1
        # a late failure, or a late report of another kind, is still fenced
        assert c.report(a, first, "logs", chunks=[]).status_code == 409
        _backdate(c, retry["attempt_id"], 30)
        r = c.report(b, retry, "finished", exit_code=0, runtime_s=4.0)
        assert r.status_code == 200, r.text
        assert c.job(user, job["id"])["state"] == "succeeded"
        assert _states(c, user, job["id"]) == ["lost", "succeeded"]
        assert _charge(c, first["attempt_id"]).charged == 0  # nothing billed for the duplicate
        assert _charge(c, retry["attempt_id"]).billed_seconds == 4
        spend = c.c.get("/v1/spend", headers=auth(user)).json()
        assert spend["total_charged"] == str(charge_for(4, D("3.6")))
        _verify(c)


def test_a_late_failure_is_still_fenced(db_url: str) -> None:
    with coordinator(db_url) as c:
        _, a = _market(c, "a")
        user = _user(c)
        job = c.submit(user, {"command": ["true"], "max_retries": 3})
        first = _start(c, a)
        _lose(c, a)
        assert c.report(a, first, "finished", exit_code=1).status_code == 409
        assert c.job(user, job["id"])["state"] == "queued"


def test_a_hello_carrying_finished_attempts_settles_them(db_url: str) -> None:
    with coordinator(db_url) as c:
        _, a = _market(c, "a", gpus=2)
        user = _user(c)
        done = c.submit(user, {"command": ["true"], "max_retries": 3})
        dead = c.submit(user, {"command": ["true"], "max_retries": 3})
        one, two = _start(c, a), _start(c, a)
        by_job = {one["job_id"]: one, two["job_id"]: two}
        fin, running = by_job[done["id"]], by_job[dead["id"]]
        _backdate(c, fin["attempt_id"], 40)
        # the agent was killed after the job ended and before its report left; it restarts
        # and says hello with the journaled report
        body = {
            "name": "a",
            "gpus": [gpu(0), gpu(1)],
            "accepts_unisolated": True,
            "finished": [
                {
                    "attempt_id": fin["attempt_id"],
                    "fencing_token": fin["fencing_token"],
                    "exit_code": 0,
                    "runtime_s": 12.2,
                },
                # a stale entry (wrong token) is skipped, not an error
                {"attempt_id": running["attempt_id"], "fencing_token": 99, "exit_code": 0},
            ],
        }
        r = c.c.post("/v1/agent/hello", json=body, headers=a.headers)
        assert r.status_code == 200, r.text
        assert c.job(user, done["id"])["state"] == "succeeded"
        assert _charge(c, fin["attempt_id"]).billed_seconds == 12
        # what it did not carry died with the agent
        assert _states(c, user, dead["id"])[0] == "lost"
        assert _charge(c, running["attempt_id"]).outcome == "lost"
        _verify(c)


def test_billing_uses_the_agents_runtime_within_bounds(db_url: str) -> None:
    with coordinator(db_url) as c:
        _, a = _market(c, "a", gpus=3)
        user = _user(c)
        jobs = [c.submit(user, {"command": ["true"]}) for _ in range(3)]
        atts = [_start(c, a) for _ in jobs]
        for att in atts:
            _backdate(c, att["attempt_id"], 100)
        # the coordinator saw ~100 s between the reports (it was away); the job ran 7.4 s
        assert c.report(a, atts[0], "finished", exit_code=0, runtime_s=7.4).status_code == 200
        # an agent cannot claim more than the coordinator saw pass since it assigned the work
        assert c.report(a, atts[1], "finished", exit_code=3, runtime_s=5000.0).status_code == 200
        # an older agent sends nothing: the coordinator's own view
        assert c.report(a, atts[2], "finished", exit_code=0).status_code == 200
        billed = [_charge(c, att["attempt_id"]).billed_seconds for att in atts]
        assert billed[0] == 7
        with c.db.sessions() as s:
            rows = [s.get(Attempt, att["attempt_id"]) for att in atts]
        ceilings = [
            metered_seconds((utc(r.finished_at) - utc(r.created_at)).total_seconds())  # type: ignore[operator, union-attr, arg-type]
            for r in rows
        ]
        assert 100 <= billed[1] == ceilings[1] <= 102
        assert 100 <= billed[2] <= ceilings[2]
        assert rows[0] is not None and rows[0].runtime_s == 7.4
        _verify(c)


def _output(c: Coordinator, user: str, job_id: str) -> list[str]:
    r = c.c.get(f"/v1/jobs/{job_id}/logs", headers=auth(user))
    assert r.status_code == 200, r.text
    return [ch["data"] for ch in r.json()["chunks"]]


def test_output_after_the_finish_of_the_same_attempt_is_kept(db_url: str) -> None:
    """The agent's watchdog delivers a frozen agent's finish report; the output before it,
    still inside the agent, arrives when the agent thaws and is kept. A second finish (the
    agent's own) is refused; output of a lost or stale attempt still is."""
    with coordinator(db_url) as c:
        _, a = _market(c, "a")
        user = _user(c)
        job = c.submit(user, {"command": ["true"], "max_retries": 3})
        att = _start(c, a)
        assert c.report(a, att, "finished", exit_code=0, runtime_s=1.0).status_code == 200
        assert c.job(user, job["id"])["state"] == "succeeded"
        out = [{"stream": "stdout", "data": "ran\n"}]
        assert c.report(a, att, "logs", chunks=out).status_code == 200
        assert _output(c, user, job["id"]) == ["ran\n"]
        assert c.report(a, att, "finished", exit_code=0, runtime_s=1.0).status_code == 409
        stale = att["fencing_token"] + 1
        assert c.report(a, att, "logs", fencing_token=stale, chunks=out).status_code == 409
        assert _states(c, user, job["id"]) == ["succeeded"]
        _verify(c)

        # a failed attempt's output is kept too; a lost one's is not
        failing = c.submit(user, {"command": ["false"], "max_retries": 0})
        att = _start(c, a)
        assert c.report(a, att, "finished", exit_code=3).status_code == 200
        assert c.report(a, att, "logs", chunks=out).status_code == 200
        assert _output(c, user, failing["id"]) == ["ran\n"]
        lost = c.submit(user, {"command": ["true"], "max_retries": 3})
        att = _start(c, a)
        _lose(c, a)
        assert c.report(a, att, "logs", chunks=out).status_code == 409
        assert _output(c, user, lost["id"]) == []
