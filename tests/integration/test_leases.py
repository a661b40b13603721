"""Leases: a node that stops heartbeating goes offline, its attempts are lost and their jobs
re-queued (or failed when no retries are left); late reports from lost attempts are fenced."""

from __future__ import annotations

import time
from typing import Any

from helpers import Coordinator, Node, auth, coordinator, gpu, wait_for

# short enough that a test waits little for a lapse, long enough that a loaded machine (the
# suite runs in three processes on two cores) does not lapse a lease the test keeps renewing
LEASE = {"lease_timeout_s": 2.0, "reaper_interval_s": 0.2}


def _node_status(co: Coordinator, node: Node) -> str:
    nodes = co.c.get("/v1/nodes", headers=auth(co.admin)).json()
    return str(next(n["status"] for n in nodes if n["id"] == node.id))


def _running(
    co: Coordinator,
    node: Node,
    user: str,
    spec: dict[str, Any],
    alive: tuple[tuple[Node, dict[str, Any]], ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit a job, wait until ``node`` gets it, report it started. ``alive``: nodes already
    running an attempt, which heartbeat meanwhile (only the test says when a node falls
    silent)."""

    def beat() -> None:
        co.heartbeat(node)
        for n, att in alive:
            co.heartbeat(n, [att["attempt_id"]])

    def started() -> dict[str, Any] | None:
        beat()
        found = co.work(node, wait=0.3)
        return found["start"][0] if found["start"] else None

    beat()
    job = co.submit(user, spec)
    att = wait_for(started, what=f"an attempt for {node.id}")
    assert att["job_id"] == job["id"]
    co.heartbeat(node, [att["attempt_id"]])
    assert co.report(node, att, "started").status_code == 200
    return job, att


def test_silent_nodes_lose_their_jobs_and_heartbeating_nodes_keep_theirs(db_url: str) -> None:
    """Three nodes: ``a`` (job with retries left) and ``b`` (job without) go silent; ``c``
    keeps heartbeating through the same stretch. One lease lapse checks all three."""
    with coordinator(db_url, **LEASE) as co:
        provider = co.token("provider", "prov")
        a = co.register(provider, [gpu(0, "A100-80GB")], name="a")
        b = co.register(provider, [gpu(0, "RTX-4090", 24_000)], name="b")
        c = co.register(provider, [gpu(0, "T4", 16_000)], name="c")
        user = co.token("consumer", "alice")
        spec = {"command": ["sleep", "60"]}
        job_a, att_a = _running(
            co, a, user, spec | {"max_retries": 2, "resources": {"gpu_models": ["A100-80GB"]}}
        )
        job_b, att_b = _running(
            co,
            b,
            user,
            spec | {"max_retries": 0, "resources": {"gpu_models": ["RTX-4090"]}},
            alive=((a, att_a),),
        )
        job_c, att_c = _running(
            co,
            c,
            user,
            spec | {"resources": {"gpu_models": ["T4"]}},
            alive=((a, att_a), (b, att_b)),
        )
        assert {_node_status(co, n) for n in (a, b, c)} == {"online"}

        # a and b fall silent; c heartbeats on while we wait for both leases to lapse
        started = time.monotonic()

        def both_lost() -> bool:
            assert co.heartbeat(c, [att_c["attempt_id"]])["stop"] == []
            ja, jb = co.job(user, job_a["id"]), co.job(user, job_b["id"])
            return ja["retries_used"] == 1 and jb["state"] == "failed"

        wait_for(both_lost, what="the silent nodes' jobs to be lost")
        assert time.monotonic() - started >= 0.5  # not before the lease could lapse

        # a: re-queued, its retry used
        requeued = co.job(user, job_a["id"])
        assert requeued["state"] == "queued"
        assert requeued["attempts"][0]["state"] == "lost"
        assert "missed heartbeats" in requeued["attempts"][0]["reason"]
        assert requeued["node_id"] is None
        assert [(e["from"], e["to"]) for e in co.events(user, job_a["id"])] == [
            (None, "queued"),
            ("queued", "assigned"),
            ("assigned", "running"),
            ("running", "lost"),
            ("lost", "queued"),
        ]
        # b: failed, as it had no retries; no retry is counted for it
        failed = co.job(user, job_b["id"])
        assert "no retries left" in failed["reason"]
        assert failed["retries_used"] == 0
        assert failed["finished_at"] is not None
        assert failed["attempts"][0]["state"] == "lost"
        assert [e["to"] for e in co.events(user, job_b["id"])] == [
            "queued",
            "assigned",
            "running",
            "lost",
            "failed",
        ]
        # c: untouched
        kept = co.job(user, job_c["id"])
        assert kept["state"] == "running" and kept["retries_used"] == 0
        assert kept["attempts"][0]["state"] == "running"
        statuses = [_node_status(co, n) for n in (a, b, c)]
        assert statuses == ["offline", "offline", "online"]
        # the lost attempts no longer hold their GPUs
        busy = {
            g["node_id"] for g in co.c.get("/v1/gpus", headers=auth(co.admin)).json() if g["busy"]
        }
        assert busy == {c.id}

        # late reports from the lost attempts are fenced off and change nothing (a late
        # success is the one exception while its job waits for a retry: test_late_reports;
        # b was not re-queued, so even its success is fenced)
        before = {j: co.job(user, j) for j in (job_a["id"], job_b["id"])}
        r = co.report(b, att_b, "finished", exit_code=0)
        assert r.status_code == 409, r.text
        for node, att in ((a, att_a), (b, att_b)):
            for what, body in (
                ("started", {}),
                ("finished", {"exit_code": 1}),
                ("logs", {"chunks": [{"stream": "stdout", "data": "late"}]}),
            ):
                r = co.report(node, att, what, **body)
                assert r.status_code == 409, (what, r.text)
                assert r.json()["error"]["code"] == "stale_fencing_token"
        for job_id, shown in before.items():
            assert co.job(user, job_id) == shown
            logs = co.c.get(f"/v1/jobs/{job_id}/logs", headers=auth(user)).json()
            assert logs["chunks"] == []

        # a comes back with its next heartbeat, is told to stop the lost attempt, and the
        # job is placed again under a new fencing token
        assert co.heartbeat(a, [att_a["attempt_id"]])["stop"] == [att_a["attempt_id"]]
        assert _node_status(co, a) == "online"
        again = co.next_start(a, keep_alive=True)
        assert again["job_id"] == job_a["id"]
        assert again["attempt_id"] != att_a["attempt_id"]
        assert again["number"] == 2 and again["fencing_token"] > att_a["fencing_token"]
        assert co.report(a, again, "started").status_code == 200
        assert co.report(a, again, "finished", exit_code=0).status_code == 200
        done = co.job(user, job_a["id"])
        assert done["state"] == "succeeded" and done["retries_used"] == 1
        assert [x["state"] for x in done["attempts"]] == ["lost", "succeeded"]
        # the old token stays stale for good
        r = co.report(a, att_a, "finished", exit_code=1)
        assert r.status_code == 409
        assert co.job(user, job_a["id"])["state"] == "succeeded"

        # b comes back too, but is not handed its failed job again
        co.heartbeat(b)
        assert _node_status(co, b) == "online"
        assert co.work(b, wait=0.3) == {"start": [], "stop": []}
        assert co.job(user, job_b["id"])["state"] == "failed"


def test_retries_run_out_after_max_retries_losses(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        job, att = _running(co, node, user, {"command": ["sleep", "60"], "max_retries": 1})
        # the agent itself gives the attempt up (it could not renew its lease)
        r = co.report(node, att, "finished", lost=True, reason="lease lost")
        assert r.status_code == 200, r.text
        shown = co.job(user, job["id"])
        # re-queued (the scheduler may already have placed it again)
        assert shown["retries_used"] == 1
        assert shown["state"] in ("queued", "assigned")
        assert shown["attempts"][0]["state"] == "lost"
        assert [e["to"] for e in co.events(user, job["id"])][3:5] == ["lost", "queued"]

        second = co.next_start(node)
        assert second["number"] == 2
        r = co.report(node, second, "finished", lost=True, reason="lease lost")
        assert r.status_code == 200, r.text
        shown = co.job(user, job["id"])
        assert shown["state"] == "failed"
        assert shown["retries_used"] == 1
        assert [a["state"] for a in shown["attempts"]] == ["lost", "lost"]
        assert [e["to"] for e in co.events(user, job["id"])] == [
            "queued",
            "assigned",
            "running",
            "lost",
            "queued",
            "assigned",
            "lost",
            "failed",
        ]
