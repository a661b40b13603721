"""Gangs through the API: a job on several nodes is applied as one attempt per member, each
told its rank and peers; it runs, fails and is lost as one unit; each member is billed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from helpers import Coordinator, Node, auth, coordinator, gpu, wait_for
from sqlalchemy import select

from gpunet.core.gangs import DEFAULT_PORTS
from gpunet.services.leases import node_lost
from gpunet.store.tables import Attempt, AttemptCharge


@pytest.fixture
def co(db_url: str) -> Iterator[Coordinator]:
    with coordinator(db_url) as c:
        yield c


def _nodes(co: Coordinator, n: int, addr: bool = True) -> list[Node]:
    provider = co.token("provider", "owner1")
    return [
        co.register(
            provider,
            [gpu(0), gpu(1)],
            name=f"n{i}",
            **({"advertise_addr": f"10.0.0.{i + 1}"} if addr else {}),
        )
        for i in range(n)
    ]


def _gang_spec(**kw: Any) -> dict[str, Any]:
    return {"command": ["true"], "resources": {"nodes": 2, "gpus": 1}} | kw


def _starts(co: Coordinator, nodes: list[Node], count: int) -> dict[str, tuple[Node, Any]]:
    """Poll the nodes until ``count`` of them got a start item: node id -> (node, item)."""
    got: dict[str, tuple[Node, Any]] = {}

    def poll() -> bool:
        for n in nodes:
            if n.id not in got:
                w = co.work(n)
                if w["start"]:
                    got[n.id] = (n, w["start"][0])
        return len(got) >= count

    wait_for(poll, what=f"{count} members to be delivered")
    return got


def _by_rank(got: dict[str, tuple[Node, Any]]) -> list[tuple[Node, Any]]:
    return sorted(got.values(), key=lambda ni: ni[1]["gang"]["rank"])


def _stop_items(co: Coordinator, node: Node) -> list[dict[str, Any]]:
    return list(co.work(node)["stop"])


def test_a_gang_is_applied_as_one_attempt_per_member_and_succeeds_when_all_do(
    co: Coordinator,
) -> None:
    nodes = _nodes(co, 3)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec())
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    g0, g1 = a0["gang"], a1["gang"]
    assert (g0["rank"], g1["rank"]) == (0, 1)
    addr = {n.id: f"10.0.0.{i + 1}" for i, n in enumerate(nodes)}
    listed = co.c.get("/v1/nodes", headers=auth(co.admin)).json()
    assert {n["id"]: n["advertise_addr"] for n in listed} == addr
    assert g0["addrs"] == g1["addrs"] == [addr[n0.id], addr[n1.id]]  # rank order, advertised
    assert g0["master_port"] == g1["master_port"]
    assert DEFAULT_PORTS[0] <= g0["master_port"] <= DEFAULT_PORTS[1]
    assert g0["gpus_per_node"] == 1
    assert a0["number"] == a1["number"] and a0["fencing_token"] == a1["fencing_token"]
    assert a0["attempt_id"] != a1["attempt_id"] and n0.id != n1.id

    assert co.report(n0, a0, "started").status_code == 200
    assert co.job(user, job["id"])["state"] == "assigned"  # a gang runs once all members do
    assert co.report(n1, a1, "started").status_code == 200
    assert co.job(user, job["id"])["state"] == "running"

    assert co.report(n1, a1, "logs", chunks=[{"stream": "stdout", "data": "from 1\n"}]).is_success
    assert co.report(n1, a1, "finished", exit_code=0).status_code == 200
    assert co.job(user, job["id"])["state"] == "running"  # rank 0 still runs
    assert co.report(n0, a0, "finished", exit_code=0).status_code == 200
    shown = co.job(user, job["id"])
    assert shown["state"] == "succeeded"
    members = [(a["rank"], a["node_id"], a["state"]) for a in shown["attempts"]]
    assert members == [(0, n0.id, "succeeded"), (1, n1.id, "succeeded")]


def test_a_lost_member_stops_the_others_and_the_gang_is_placed_again(co: Coordinator) -> None:
    nodes = _nodes(co, 3)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec(max_retries=2))
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    for n, a in ((n0, a0), (n1, a1)):
        assert co.report(n, a, "started").status_code == 200

    node_lost(co.db, n1.id, "test: node gone")  # what the lease reaper does
    stops = _stop_items(co, n0)
    assert [(s["attempt_id"], s["kind"]) for s in stops] == [(a0["attempt_id"], "gang")]
    assert "rank 1" in stops[0]["reason"] and "lost" in stops[0]["reason"]
    assert stops[0]["grace_s"] <= 5
    shown = co.job(user, job["id"])
    assert shown["state"] == "queued" and shown["retries_used"] == 1

    # the stopped member's confirmation is still taken (its job moved on): its GPUs free up
    assert co.report(n0, a0, "finished", exit_code=-15, reason="stopped").status_code == 200
    spare = [n for n in nodes if n.id != n1.id]
    (m0, b0), (m1, b1) = _by_rank(_starts(co, spare, 2))
    assert {m0.id, m1.id} == {n.id for n in spare}
    assert b0["number"] == a0["number"] + 1
    shown = co.job(user, job["id"])
    states = {(a["number"], a["rank"]): a["state"] for a in shown["attempts"]}
    assert states[(1, 0)] == "cancelled" and states[(1, 1)] == "lost"
    assert states[(2, 0)] == states[(2, 1)] == "assigned"
    # a late report of the old gang is fenced
    assert co.report(n0, a0, "logs", chunks=[{"stream": "stdout", "data": "x"}]).status_code == 409


def test_a_failing_member_fails_the_job_and_stops_the_others(co: Coordinator) -> None:
    nodes = _nodes(co, 2)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec())
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    for n, a in ((n0, a0), (n1, a1)):
        assert co.report(n, a, "started").status_code == 200
    assert co.report(n1, a1, "finished", exit_code=3).status_code == 200
    # the verdict waits for the other member (had its host died, the job would be re-queued)
    assert co.job(user, job["id"])["state"] == "running"
    (stop,) = _stop_items(co, n0)
    assert stop["kind"] == "gang" and "failed" in stop["reason"]
    assert co.report(n0, a0, "finished", exit_code=-15).status_code == 200
    shown = co.job(user, job["id"])
    assert shown["state"] == "failed" and shown["exit_code"] == 3
    assert "rank 1 failed: exit 3" in shown["reason"]
    assert shown["attempts"][0]["state"] == "cancelled"


def test_a_member_failing_because_its_peer_died_requeues_the_gang(co: Coordinator) -> None:
    nodes = _nodes(co, 3)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec(max_retries=2))
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    for n, a in ((n0, a0), (n1, a1)):
        assert co.report(n, a, "started").status_code == 200
    # rank 1's host dies; rank 0's collective breaks before the lease lapses
    assert co.report(n0, a0, "finished", exit_code=1).status_code == 200
    node_lost(co.db, n1.id, "test: node gone")  # what the lease reaper does
    shown = co.job(user, job["id"])
    assert shown["state"] == "queued" and shown["retries_used"] == 1, shown
    states = {a["rank"]: a["state"] for a in shown["attempts"]}
    assert states == {0: "failed", 1: "lost"}


def test_a_rendezvous_failure_requeues_the_gang_with_its_reason(co: Coordinator) -> None:
    nodes = _nodes(co, 2)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec(max_retries=1))
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    why = "rendezvous: rank 1 cannot reach rank 0 at 10.0.0.1:29500 within 30s: refused"
    r = co.report(n1, a1, "finished", lost=True, rendezvous_failed=True, reason=why)
    assert r.status_code == 200
    shown = co.job(user, job["id"])
    assert shown["state"] == "queued" and "rendezvous" in shown["reason"]
    with co.db.sessions() as s:
        att = s.get(Attempt, a1["attempt_id"])
        assert att is not None and att.lost_cause == "rendezvous"
    (stop,) = _stop_items(co, n0)
    assert stop["kind"] == "gang"


def test_cancel_stops_every_member(co: Coordinator) -> None:
    nodes = _nodes(co, 2)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec())
    got = _starts(co, nodes, 2)
    r = co.c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(user))
    assert r.status_code == 200, r.text
    for n, a in got.values():
        (stop,) = _stop_items(co, n)
        assert (stop["attempt_id"], stop["kind"]) == (a["attempt_id"], "cancel")


def test_an_image_job_on_several_nodes_is_refused(co: Coordinator) -> None:
    _nodes(co, 2)
    user = co.token("consumer", "alice")
    r = co.c.post("/v1/jobs", json=_gang_spec(image="alpine:3"), headers=auth(user))
    assert r.status_code == 422 and "several nodes" in r.text


def test_each_member_is_billed_and_a_lost_member_is_refunded(co: Coordinator) -> None:
    nodes = _nodes(co, 3)
    provider = co.token("provider", "owner1")
    for n in nodes:
        r = co.c.put("/v1/prices", json={"node_id": n.id, "price": "3.6"}, headers=auth(provider))
        assert r.status_code == 200, r.text
    user = co.token("consumer", "alice")
    grant = {"account": "alice", "amount": "100"}
    r = co.c.post("/v1/credits/grant", json=grant, headers=auth(co.admin))
    assert r.status_code == 201, r.text
    job = co.submit(user, _gang_spec(max_price="4"))
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    bal = co.c.get("/v1/balance", headers=auth(user)).json()
    assert Decimal(bal["held"]) == Decimal("7.2")  # one hour of one GPU, for each member
    for n, a in ((n0, a0), (n1, a1)):
        assert co.report(n, a, "started").status_code == 200
    assert co.report(n1, a1, "finished", exit_code=None, lost=True, reason="gone").is_success
    assert co.report(n0, a0, "finished", exit_code=-15, runtime_s=10.0).is_success
    with co.db.sessions() as s:
        charges = {
            c.attempt_id: c
            for c in s.scalars(select(AttemptCharge).where(AttemptCharge.job_id == job["id"]))
        }
    # The lost gang is queued again and may already be placed anew: those members are held, not
    # settled; only the first two attempts' charges are this test's subject.
    first = {a0["attempt_id"], a1["attempt_id"]}
    assert first <= set(charges), charges
    assert all(c.settled_at is None for a, c in charges.items() if a not in first)
    lost, stopped = charges[a1["attempt_id"]], charges[a0["attempt_id"]]
    assert lost.outcome == "lost" and lost.charged == 0
    assert stopped.outcome == "cancelled" and stopped.settled_at is not None
    assert stopped.billed_seconds <= 11
    check = co.c.get("/v1/ledger/verify", headers=auth(co.admin)).json()
    assert check["ok"], check


def test_why_explains_a_gang_that_does_not_fit_yet(co: Coordinator) -> None:
    n0, n1 = _nodes(co, 2)
    user = co.token("consumer", "alice")
    busy = co.submit(user, {"command": ["sleep", "60"], "resources": {"gpus": 2}})
    wait_for(lambda: co.job(user, busy["id"])["state"] == "assigned", what="the plain job")
    job = co.submit(user, _gang_spec(resources={"nodes": 2, "gpus": 2}))
    r = co.c.get(f"/v1/jobs/{job['id']}/why", headers=auth(user))
    assert r.status_code == 200, r.text
    why = r.json()
    assert why["state"] == "queued" and why.get("would_place") is None, why
    assert "needs 2 nodes" in why["gang"] and "1 such node free" in why["gang"], why
    assert why["gang"] in why["summary"]


def test_a_gang_is_not_placed_again_on_the_pair_that_failed_its_check(co: Coordinator) -> None:
    nodes = _nodes(co, 2)
    user = co.token("consumer", "alice")
    job = co.submit(user, _gang_spec(max_retries=3))
    (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
    why = f"rendezvous: rank 1 cannot reach rank 0 at 10.0.0.1:{a0['gang']['master_port']}"
    assert co.report(n1, a1, "finished", rendezvous_failed=True, reason=why).is_success
    assert co.report(n0, a0, "finished", exit_code=-15).is_success  # stopped with it
    # the two nodes are free again, but they are the pair that failed: the gang waits
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert not any(co.work(n)["start"] for n in nodes)
        time.sleep(0.1)
    assert co.job(user, job["id"])["state"] == "queued"
    provider = co.token("provider", "owner1")
    spare = co.register(provider, [gpu(0)], name="n9", advertise_addr="10.0.0.9")
    got = _starts(co, [*nodes, spare], 2)
    assert spare.id in got and len(got) == 2  # with one of the two, not both
    assert co.job(user, job["id"])["retries_used"] == 1


def test_a_gang_out_of_credits_stops_every_member(db_url: str) -> None:
    from datetime import timedelta

    from gpunet.services.billing import meter_running
    from gpunet.util import now, utc

    with coordinator(db_url, hold_hours=Decimal("0.01")) as co:
        nodes = _nodes(co, 2)
        provider = co.token("provider", "owner1")
        for n in nodes:
            body = {"node_id": n.id, "price": "3.6"}
            assert co.c.put("/v1/prices", json=body, headers=auth(provider)).is_success
        user = co.token("consumer", "alice")
        grant = {"account": "alice", "amount": "0.1"}  # the two holds (0.072), little more
        assert co.c.post("/v1/credits/grant", json=grant, headers=auth(co.admin)).is_success
        job = co.submit(user, _gang_spec())
        (n0, a0), (n1, a1) = _by_rank(_starts(co, nodes, 2))
        for n, a in ((n0, a0), (n1, a1)):
            assert co.report(n, a, "started").status_code == 200
        stopped: dict[str, str] = {}
        for _ in range(5):  # each interim settlement eats the hold, then what tops it up
            with co.db.transaction() as s:
                att = s.get(Attempt, a0["attempt_id"])
                assert att is not None and att.started_at is not None
                back = timedelta(seconds=300)
                att.started_at = utc(att.started_at) - back  # type: ignore[operator]
                att.created_at = utc(att.created_at) - back  # type: ignore[operator]
            stopped = meter_running(co.db, lambda node_id: now())
            if stopped:
                break
        assert a0["attempt_id"] in stopped
        shown = co.job(user, job["id"])
        assert shown["state"] == "failed" and "out of credits" in shown["reason"]
        (stop,) = _stop_items(co, n1)
        assert (stop["attempt_id"], stop["kind"]) == (a1["attempt_id"], "gang")
