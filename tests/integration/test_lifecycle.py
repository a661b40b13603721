"""A job's life through the agent endpoints: assigned, started, logs, finished; cancel;
idempotent submit."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from helpers import DEADLINE_S, auth, coordinator, gpu, wait_for


def test_job_runs_to_success_and_events_record_every_transition(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        user = co.token("consumer", "alice")
        node = co.register(provider, [gpu(0), gpu(1)])

        job = co.submit(
            user,
            {
                "name": "train",
                "command": ["python", "train.py"],
                "resources": {"gpus": 2, "gpu_models": ["A100"]},
            },
        )
        assert job["state"] == "queued"
        assert job["spec"]["resources"]["gpu_models"] == ["A100-80GB"]

        att = co.next_start(node)
        assert att["job_id"] == job["id"]
        assert att["fencing_token"] == 1 and att["number"] == 1
        assert sorted(att["gpu_indices"]) == [0, 1]
        assert att["spec"]["command"] == ["python", "train.py"]
        shown = co.job(user, job["id"])
        assert shown["state"] == "assigned"
        assert shown["node_id"] == node.id
        assert [a["state"] for a in shown["attempts"]] == ["assigned"]

        # the GPUs it holds are busy; nothing else would fit
        gpus = co.c.get("/v1/gpus", headers=auth(co.admin)).json()
        assert {g["attempt_id"] for g in gpus} == {att["attempt_id"]}

        assert co.report(node, att, "started").status_code == 200
        assert co.report(node, att, "started").status_code == 200  # a repeat is harmless
        assert co.job(user, job["id"])["state"] == "running"

        r = co.report(
            node,
            att,
            "logs",
            chunks=[
                {"stream": "stdout", "data": "epoch 1\n"},
                {"stream": "stderr", "data": "warning\n"},
            ],
        )
        assert r.status_code == 200, r.text
        r = co.report(node, att, "logs", chunks=[{"stream": "stdout", "data": "epoch 2\n"}])
        assert r.status_code == 200, r.text

        logs = co.c.get(f"/v1/jobs/{job['id']}/logs", headers=auth(user)).json()
        assert [(c["stream"], c["data"]) for c in logs["chunks"]] == [
            ("stdout", "epoch 1\n"),
            ("stderr", "warning\n"),
            ("stdout", "epoch 2\n"),
        ]
        assert all(c["attempt_id"] == att["attempt_id"] for c in logs["chunks"])
        first = logs["chunks"][0]["id"]
        later = co.c.get(
            f"/v1/jobs/{job['id']}/logs", params={"after": first}, headers=auth(user)
        ).json()
        assert [c["data"] for c in later["chunks"]] == ["warning\n", "epoch 2\n"]
        assert later["next"] == logs["chunks"][-1]["id"]

        r = co.report(node, att, "finished", exit_code=0)
        assert r.status_code == 200, r.text
        done = co.job(user, job["id"])
        assert done["state"] == "succeeded"
        assert done["exit_code"] == 0
        assert done["attempts"][0]["state"] == "succeeded"
        assert done["started_at"] and done["finished_at"]

        events = co.events(user, job["id"])
        assert [(e["from"], e["to"]) for e in events] == [
            (None, "queued"),
            ("queued", "assigned"),
            ("assigned", "running"),
            ("running", "succeeded"),
        ]
        times = [datetime.fromisoformat(e["at"]) for e in events]
        assert all(t.tzinfo is not None for t in times)
        assert times == sorted(times)
        assert events[1]["actor"] == "scheduler"

        # once finished, the GPUs are free again and a finished report cannot be repeated
        gpus = co.c.get("/v1/gpus", headers=auth(co.admin)).json()
        assert all(not g["busy"] for g in gpus)
        again = co.report(node, att, "finished", exit_code=1)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "stale_fencing_token"
        assert co.job(user, job["id"])["state"] == "succeeded"


def test_parked_long_poll_is_woken_by_an_assignment(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        assert co.work(node, wait=0) == {"start": [], "stop": []}
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            parked = pool.submit(co.work, node, 8)
            time.sleep(0.3)
            job = co.submit(user)
            work = parked.result(timeout=DEADLINE_S)
            assert time.monotonic() - t0 < 5, "the long-poll was not woken by the assignment"
        assert [a["job_id"] for a in work["start"]] == [job["id"]]
        assert work["stop"] == []
        # the attempt is offered again until the agent says it started it
        assert co.work(node, wait=0)["start"] == work["start"]
        assert co.report(node, work["start"][0], "started").status_code == 200
        # then an idle long-poll answers empty when its wait runs out
        t0 = time.monotonic()
        assert co.work(node, wait=0.3) == {"start": [], "stop": []}
        # the coordinator waits 80-100% of the asked wait (jitter spreads a fleet's re-polls)
        assert 0.8 * 0.3 - 0.01 <= time.monotonic() - t0 < 5


def test_non_zero_exit_fails_the_job(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        job = co.submit(user)
        att = co.next_start(node)
        assert co.report(node, att, "started").status_code == 200
        assert co.report(node, att, "finished", exit_code=3).status_code == 200
        done = co.job(user, job["id"])
        assert (done["state"], done["exit_code"]) == ("failed", 3)
        assert done["attempts"][0]["state"] == "failed"
        assert [e["to"] for e in co.events(user, job["id"])] == [
            "queued",
            "assigned",
            "running",
            "failed",
        ]


def test_cancel_of_running_job_asks_the_agent_to_stop(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        job = co.submit(user)
        att = co.next_start(node)
        assert co.report(node, att, "started").status_code == 200

        # the agent is parked in its long-poll when the cancel comes: it is woken at once
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            parked = pool.submit(co.work, node, 8)
            time.sleep(0.3)
            r = co.c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(user))
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "cancelled"
            work = parked.result(timeout=DEADLINE_S)
            assert time.monotonic() - t0 < 5, "the long-poll was not woken by the cancel"
        assert work == {
            "start": [],
            "stop": [
                {
                    "attempt_id": att["attempt_id"],
                    "fencing_token": att["fencing_token"],
                    "kind": "cancel",  # the job ends; a preemption would re-queue it
                    "grace_s": 5.0,
                    "reason": "job cancelled",
                }
            ],
        }
        # while it stops, the attempt is still the node's: a heartbeat does not orphan it (an
        # orphan's finish report would be dropped, and the attempt would hold its GPUs)
        assert co.heartbeat(node, [att["attempt_id"]])["stop"] == []
        shown = co.job(user, job["id"])
        assert shown["state"] == "cancelled"
        assert shown["attempts"][0]["state"] == "stopping"
        # asking again still shows it, until the agent confirms
        assert co.work(node, wait=5)["stop"] == work["stop"]

        # the GPU stays held until the agent confirms the process is gone
        gpus = co.c.get("/v1/gpus", headers=auth(co.admin)).json()
        assert gpus[0]["busy"]
        r = co.report(node, att, "finished", exit_code=-15)
        assert r.status_code == 200, r.text
        shown = co.job(user, job["id"])
        assert shown["state"] == "cancelled"
        assert shown["attempts"][0]["state"] == "cancelled"
        assert not co.c.get("/v1/gpus", headers=auth(co.admin)).json()[0]["busy"]
        assert co.work(node)["stop"] == []
        assert [(e["from"], e["to"]) for e in co.events(user, job["id"])] == [
            (None, "queued"),
            ("queued", "assigned"),
            ("assigned", "running"),
            ("running", "cancelled"),
        ]

        # cancelling again is a no-op, not an error
        r = co.c.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(user))
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert len(co.events(user, job["id"])) == 4


def test_cancel_of_queued_job(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        # a first job holds the only GPU, so the second stays queued
        first = co.submit(user)
        wait_for(lambda: co.job(user, first["id"])["state"] == "assigned", what="assignment")
        second = co.submit(user)
        r = co.c.post(f"/v1/jobs/{second['id']}/cancel", headers=auth(user))
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert [e["to"] for e in co.events(user, second["id"])] == ["queued", "cancelled"]
        assert co.job(user, second["id"])["attempts"] == []


def test_idempotency_key_returns_the_same_job(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        alice = co.token("consumer", "alice")
        bob = co.token("consumer", "bob")
        a1 = co.submit(alice, key="run-42")
        a2 = co.submit(alice, {"name": "other", "command": ["false"]}, key="run-42")
        assert a2["id"] == a1["id"]
        assert a2["name"] == a1["name"]
        # the key is per account: another tenant's same key is another job
        b1 = co.submit(bob, key="run-42")
        assert b1["id"] != a1["id"]
        # and without a key, every submit is new
        a3 = co.submit(alice)
        assert a3["id"] != a1["id"]
        ids = {j["id"] for j in co.c.get("/v1/jobs", headers=auth(alice)).json()}
        assert ids == {a1["id"], a3["id"]}
