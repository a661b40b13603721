"""Owners take their GPUs back, as the coordinator sees it: a heartbeat's owner-busy flag
shows on the GPU and its offer, the scheduler keeps work off it ("owner is using it"), and
a reclaimed attempt costs the node's reputation less than a lost one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gpunet.store.tables import Attempt, Gpu
from tests.integration.helpers import Coordinator, Node, auth, coordinator, gpu, wait_for


def _beat(c: Coordinator, node: Node, busy: dict[int, bool]) -> None:
    body = {
        "attempts": [],
        "gpus": [{"index": i, "utilization_pct": 0.0, "owner_busy": b} for i, b in busy.items()],
    }
    r = c.c.post("/v1/agent/heartbeat", json=body, headers=node.headers)
    assert r.status_code == 200, r.text


def _gpus(c: Coordinator, token: str) -> dict[str, dict[str, Any]]:
    r = c.c.get("/v1/gpus", headers=auth(token))
    assert r.status_code == 200, r.text
    return {g["id"]: g for g in r.json()}


def _offers(c: Coordinator, token: str, q: str = "") -> list[dict[str, Any]]:
    r = c.c.get("/v1/offers", params={"q": q}, headers=auth(token))
    assert r.status_code == 200, r.text
    return list(r.json())


def test_an_owner_busy_gpu_is_shown_and_skipped_until_the_owner_leaves(db_url: str) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner1")
        user = c.token("consumer", "alice")
        node = c.register(provider, [gpu(0)], name="desk")
        gid = f"{node.id}/0"
        _beat(c, node, {0: True})
        wait_for(lambda: _gpus(c, c.admin)[gid]["owner_busy"], what="the flag to be flushed")
        with c.db.sessions() as s:
            assert s.scalar(select(Gpu.owner_busy).where(Gpu.id == gid)) is True

        (offer,) = _offers(c, user)
        assert offer["state"] == "owner_busy" and offer["owner_busy"] is True
        assert offer["available"] is False
        assert [o["gpu_id"] for o in _offers(c, user, "owner_busy=yes")] == [gid]
        assert _offers(c, user, "owner_busy=no") == []
        assert [o["gpu_id"] for o in _offers(c, user, "state=owner_busy")] == [gid]
        r = c.c.get("/v1/offers", params={"q": "owner_busy=maybe"}, headers=auth(user))
        assert r.status_code == 422 and "owner_busy" in r.text

        job = c.submit(user, {"command": ["true"]})  # fits the fleet: accepted, waits

        def why() -> dict[str, Any] | None:
            w = c.c.get(f"/v1/jobs/{job['id']}/why", headers=auth(user)).json()
            return w if "owner is using it" in str(w) else None

        w = wait_for(why, what="the owner reason")
        assert w["rejections"] == {"owner is using it": 1}
        assert c.work(node, wait=0.5)["start"] == []  # several scheduler passes: nothing
        assert c.job(user, job["id"])["state"] == "queued"

        _beat(c, node, {0: False})  # the owner's idle period passed (the agent decides)
        att = c.next_start(node)
        assert att["job_id"] == job["id"]
        assert _gpus(c, c.admin)[gid]["owner_busy"] is False


def test_a_reclaim_is_not_a_lost_attempt_in_the_reputation(db_url: str) -> None:
    with coordinator(db_url) as c:
        provider = c.token("provider", "owner1")
        user = c.token("consumer", "alice")
        desk = c.register(provider, [gpu(0)], name="desk")
        c.heartbeat(desk)

        def score() -> dict[str, Any]:
            r = c.c.get(f"/v1/nodes/{desk.id}/reputation", headers=auth(user))
            assert r.status_code == 200, r.text
            return dict(r.json())

        fresh = score()
        job = c.submit(user, {"command": ["sleep", "60"], "max_retries": 0})
        att = c.next_start(desk)
        assert c.report(desk, att, "started").status_code == 200
        r = c.report(
            desk, att, "finished", exit_code=-15, reclaimed=True, reason="reclaimed: the owner"
        )
        assert r.status_code == 200, r.text
        with c.db.sessions() as s:
            a = s.get(Attempt, att["attempt_id"])
            assert a is not None and a.reclaimed and a.state == "preempted"
        shown = c.job(user, job["id"])
        assert shown["retries_used"] == 0 and shown["state"] in ("queued", "assigned")

        # marked owner-busy with the report, before any telemetry: not placed there again
        assert _gpus(c, c.admin)[f"{desk.id}/0"]["owner_busy"] is True
        _beat(c, desk, {0: False})  # the agent: the owner left and the idle period passed
        att2 = c.next_start(desk)  # re-queued without a retry, placed again
        after = score()
        parts = {p["name"]: p for p in after["components"]}
        assert "0 of 2 attempts lost to host faults" in after["explanation"]
        assert "1 of 2 attempts reclaimed by the GPU's owner" in after["explanation"]
        assert parts["availability"]["value"] < 1.0
        assert parts["availability"]["weight"] < parts["host_faults"]["weight"]
        assert (
            parts["host_faults"]["value"]
            > {p["name"]: p for p in fresh["components"]}["host_faults"]["value"]
        )  # a reclaim is no fault: the clean attempts count for the node
        # the second attempt lost to its host: a fault, which costs more
        assert c.report(desk, att2, "started").status_code == 200
        r = c.report(desk, att2, "finished", exit_code=None, lost=True, reason="host died")
        assert r.status_code == 200, r.text
        lost = score()
        assert "1 of 2 attempts lost to host faults" in lost["explanation"]
        assert lost["score"] < after["score"]
        assert c.job(user, job["id"])["state"] == "failed"  # max_retries 0: a loss ends it
