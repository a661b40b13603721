"""Job arrays through the API: `array: N` queues N tasks that share an array id, each sent to
its agent with its index; they are listed together and cancelled together."""

from __future__ import annotations

from helpers import auth, coordinator, gpu


def test_an_array_is_queued_listed_run_and_cancelled_together(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        first = co.submit(user, {"name": "sweep", "command": ["true"], "array": 5})
        arr = first["array_id"]
        assert arr and arr.startswith("arr-") and first["array_index"] == 0

        r = co.c.get("/v1/jobs", params={"array": arr}, headers=auth(user))
        assert r.status_code == 200, r.text
        tasks = r.json()
        assert [t["array_index"] for t in tasks] == [0, 1, 2, 3, 4]
        assert {t["array_id"] for t in tasks} == {arr} and tasks[0]["id"] == first["id"]

        # one GPU: tasks run one by one, each told its index
        att = co.next_start(node)
        assert (att["array_id"], att["array_index"]) == (arr, 0)
        assert co.report(node, att, "started").status_code == 200
        assert co.report(node, att, "finished", exit_code=0).status_code == 200
        att = co.next_start(node)
        assert att["array_index"] == 1
        assert co.report(node, att, "started").status_code == 200

        # another tenant neither sees nor cancels it
        bob = co.token("consumer", "bob")
        assert co.c.post(f"/v1/arrays/{arr}/cancel", headers=auth(bob)).status_code == 404
        assert co.c.get("/v1/jobs", params={"array": arr}, headers=auth(bob)).json() == []

        r = co.c.post(f"/v1/arrays/{arr}/cancel", headers=auth(user))
        assert r.status_code == 200, r.text
        assert r.json() == {"array_id": arr, "cancelled": 4, "tasks": 5}  # one had succeeded
        states = [
            t["state"]
            for t in co.c.get("/v1/jobs", params={"array": arr}, headers=auth(user)).json()
        ]
        assert states == ["succeeded", "cancelled", "cancelled", "cancelled", "cancelled"]
        # the running task's agent is told to stop it
        stop = co.work(node)["stop"]
        assert [s["attempt_id"] for s in stop] == [att["attempt_id"]]


def test_an_array_in_a_batch_and_its_bounds(db_url: str) -> None:
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"), [gpu(0)])
        user = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/jobs/batch",
            json={"jobs": [{"command": ["true"]}, {"command": ["true"], "array": 3}]},
            headers=auth(user),
        )
        assert r.status_code == 201, r.text
        one, arr = r.json()["items"]
        assert len(one["ids"]) == 1 and one["array_id"] is None
        assert len(arr["ids"]) == 3 and arr["array_id"].startswith("arr-")
        r = co.c.post("/v1/jobs", json={"command": ["true"], "array": 10_001}, headers=auth(user))
        assert r.status_code == 422 and r.json()["error"]["field"] == "array", r.text
