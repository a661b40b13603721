"""Attempts the network stops without a fault: a job that exits with the re-queue code, and an
attempt the agent stopped because the GPU's owner took it back. Both re-queue the job without
using a retry; the attempt ends `preempted`."""

from __future__ import annotations

from helpers import coordinator, gpu

from gpunet.core.jobs import REQUEUE_EXIT_CODE


def test_requeue_exit_code_and_reclaim_requeue_without_using_retries(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        node = co.register(provider, [gpu(0)])
        user = co.token("consumer", "alice")
        job = co.submit(user, {"command": ["true"], "max_retries": 0})

        att1 = co.next_start(node)
        assert co.report(node, att1, "started").status_code == 200
        r = co.report(node, att1, "finished", exit_code=REQUEUE_EXIT_CODE, reason="saved")
        assert r.status_code == 200, r.text
        shown = co.job(user, job["id"])
        assert shown["retries_used"] == 0
        assert shown["state"] in ("queued", "assigned")

        att2 = co.next_start(node)
        assert att2["attempt_id"] != att1["attempt_id"]
        assert co.report(node, att2, "started").status_code == 200
        r = co.report(node, att2, "finished", exit_code=-15, reclaimed=True, reason="owner")
        assert r.status_code == 200, r.text
        # the reclaim marks the GPU owner-busy until the agent's telemetry says the owner left
        beat = {"attempts": [], "gpus": [{"index": 0, "owner_busy": False}]}
        assert co.c.post("/v1/agent/heartbeat", json=beat, headers=node.headers).is_success

        att3 = co.next_start(node)  # still no retry used: max_retries 0 would have failed it
        assert co.report(node, att3, "started").status_code == 200
        assert co.report(node, att3, "finished", exit_code=0).status_code == 200
        shown = co.job(user, job["id"])
        assert shown["state"] == "succeeded" and shown["retries_used"] == 0
        states = [a["state"] for a in shown["attempts"]]
        assert states == ["preempted", "preempted", "succeeded"]
        reasons = [e["reason"] for e in co.events(user, job["id"]) if e["to"] == "queued"]
        assert any(f"exit code {REQUEUE_EXIT_CODE}" in r for r in reasons)
        text = co.c.get("/metrics").text
        assert 'gpunet_attempts_requeued_total{cause="requeue_exit"} 1.0' in text
        assert 'gpunet_attempts_requeued_total{cause="reclaimed"} 1.0' in text
        assert "owner" in reasons


def test_a_reclaimed_attempt_that_succeeded_anyway_counts_as_done(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        node = co.register(provider, [gpu(0)])
        user = co.token("consumer", "alice")
        job = co.submit(user, {"command": ["true"]})
        att = co.next_start(node)
        assert co.report(node, att, "started").status_code == 200
        assert co.report(node, att, "finished", exit_code=0, reclaimed=True).status_code == 200
        assert co.job(user, job["id"])["state"] == "succeeded"
