"""Live preemption and admission through the API, on SQLite and PostgreSQL: an on-demand job
takes the GPU of a running interruptible one, which is stopped with its grace, billed its time
at the interruptible price and queued again naming the job that took its GPU."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from gpunet.core.ledger import charge_for
from gpunet.store.tables import Attempt, AttemptCharge
from tests.integration.helpers import Coordinator, Node, auth, coordinator, gpu, wait_for
from tests.integration.test_market import _backdate_start, _get

D = Decimal


def _priced(c: Coordinator, gpus: int, price: str, interruptible: str | None) -> Node:
    provider = c.token("provider", "owner1")
    node = c.register(provider, [gpu(i) for i in range(gpus)])
    body: dict[str, Any] = {"node_id": node.id, "price": price}
    if interruptible is not None:
        body["min_interruptible"] = interruptible
    r = c.c.put("/v1/prices", json=body, headers=auth(provider))
    assert r.status_code == 200, r.text
    return node


def _funded(c: Coordinator, account: str, amount: str = "100") -> str:
    token = c.token("consumer", account)
    r = c.c.post(
        "/v1/credits/grant", json={"account": account, "amount": amount}, headers=auth(c.admin)
    )
    assert r.status_code == 201, r.text
    return token


def _stops(c: Coordinator, node: Node) -> list[dict[str, Any]]:
    return list(c.work(node)["stop"])


INTERRUPTIBLE = {
    "name": "filler",
    "command": ["train"],
    "interruptible": True,
    "checkpoint": {"grace_s": 7},
}


def test_on_demand_job_preempts_an_interruptible_one_which_is_requeued_and_billed(
    db_url: str,
) -> None:
    with coordinator(db_url) as c:
        node = _priced(c, 1, "4", interruptible="1")
        alice = _funded(c, "alice")
        bob = _funded(c, "bob")
        filler = c.submit(alice, INTERRUPTIBLE)
        att = c.next_start(node)
        assert c.report(node, att, "started").status_code == 200
        _backdate_start(c, att["attempt_id"], 100.4)

        urgent = c.submit(bob, {"name": "urgent", "command": ["eval"], "priority": 0})
        stop = wait_for(lambda: _stops(c, node), what="the preemption stop item")
        assert len(stop) == 1
        assert stop[0]["attempt_id"] == att["attempt_id"]
        assert stop[0]["kind"] == "preempt" and stop[0]["grace_s"] == 7
        assert f"preempted by job {urgent['id']} (priority 0)" in stop[0]["reason"]
        # the waiting job names what it waits for; its GPU is not double-booked
        why = _get(c, f"/v1/jobs/{urgent['id']}/why", bob)
        assert filler["id"] in why["note"]
        time.sleep(0.5)  # several scheduler passes
        assert c.job(bob, urgent["id"])["state"] == "queued"

        # the agent stops it (SIGTERM, exit 143) and reports
        r = c.report(node, att, "finished", exit_code=143, reason="terminated")
        assert r.status_code == 200, r.text
        shown = c.job(alice, filler["id"])
        assert shown["state"] in ("queued", "assigned") and shown["retries_used"] == 0
        assert shown["attempts"][0]["state"] == "preempted"
        requeued = [e for e in c.events(alice, filler["id"]) if e["to"] == "queued"][-1]
        assert f"preempted by job {urgent['id']}" in requeued["reason"]

        nxt = c.next_start(node)  # the on-demand job gets the GPU
        with c.db.sessions() as s:
            placed = s.get(Attempt, nxt["attempt_id"])
            assert placed is not None and placed.job_id == urgent["id"]
            ch = s.get(AttemptCharge, att["attempt_id"])
            assert ch is not None and ch.outcome == "preempted"
            assert ch.rate_per_hour == D("1")  # the interruptible price, not 4
            assert ch.billed_seconds >= 100
            assert ch.charged == charge_for(ch.billed_seconds, D("1"))
            on_demand = s.get(AttemptCharge, nxt["attempt_id"])
            assert on_demand is not None and on_demand.rate_per_hour == D("4")
        assert _get(c, "/v1/ledger/verify", c.admin) == {"ok": True, "problems": []}
        # the filler waits behind on-demand work, which is never preempted for it
        time.sleep(0.3)
        assert _stops(c, node) == []
        assert c.job(alice, filler["id"])["state"] == "queued"


def test_only_outranked_interruptible_work_is_stopped_and_only_as_much_as_needed(
    db_url: str,
) -> None:
    with coordinator(db_url) as c:
        node = _priced(c, 3, "2", interruptible=None)
        alice = _funded(c, "alice")
        bob = _funded(c, "bob")
        steady = c.submit(alice, {"name": "steady", "command": ["x"]})  # on demand
        fillers = [c.submit(alice, INTERRUPTIBLE | {"name": f"f{i}"}) for i in range(2)]
        started = {}
        for _ in range(3):
            a = c.next_start(node)
            assert c.report(node, a, "started").status_code == 200
            started[a["attempt_id"]] = a
        # an interruptible job of equal rank preempts nothing
        c.submit(bob, INTERRUPTIBLE | {"name": "late filler"})
        time.sleep(0.5)
        assert _stops(c, node) == []
        urgent = c.submit(bob, {"name": "urgent", "command": ["x"], "priority": 5})
        stops = wait_for(lambda: _stops(c, node), what="a stop item")
        time.sleep(0.5)  # more passes must not stop a second attempt for the same job
        stops = _stops(c, node)
        assert len(stops) == 1 and urgent["id"] in stops[0]["reason"]
        with c.db.sessions() as s:
            victim = s.get(Attempt, stops[0]["attempt_id"])
            assert victim is not None
            assert victim.job_id in {f["id"] for f in fillers}  # never the on-demand job
            assert victim.job_id != steady["id"]


def test_unfunded_head_does_not_block_and_why_names_credits(db_url: str) -> None:
    with coordinator(db_url) as c:
        node = _priced(c, 1, "3.6", interruptible=None)
        poor = c.token("consumer", "poor")
        rich = _funded(c, "rich")
        head = c.submit(poor, {"name": "head", "command": ["x"]})
        behind = c.submit(rich, {"name": "behind", "command": ["x"]})
        att = c.next_start(node)
        with c.db.sessions() as s:
            a = s.get(Attempt, att["attempt_id"])
            assert a is not None and a.job_id == behind["id"]
        assert c.job(poor, head["id"])["state"] == "queued"
        # the GPU is free again: the head still waits, and says it is the credits
        assert c.report(node, att, "started").status_code == 200
        assert c.report(node, att, "finished", exit_code=0).status_code == 200
        why = wait_for(
            lambda: (
                (w := _get(c, f"/v1/jobs/{head['id']}/why", poor))
                and "waiting for credits" in w.get("note", "")
                and w
            ),
            what="the credits reason",
        )
        assert "balance is 0" in why["note"]
        assert "1 waiting for credits" in why["summary"]
        with c.db.sessions() as s:
            assert list(s.scalars(select(Attempt).where(Attempt.job_id == head["id"]))) == []
