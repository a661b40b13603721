"""Batched reports: several attempts' started and finished reports in one request, each
fenced and answered as its own request would be."""

from __future__ import annotations

from typing import Any

from helpers import Coordinator, Node, coordinator, gpu, wait_for


def _reports(co: Coordinator, node: Node, **body: Any) -> list[dict[str, Any]]:
    r = co.c.post("/v1/agent/reports", json=body, headers=node.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def _starts(co: Coordinator, node: Node, n: int) -> list[dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}

    def poll() -> bool:
        for item in co.work(node, wait=1)["start"]:
            got[item["attempt_id"]] = item
        return len(got) >= n

    wait_for(poll, poll=0, what=f"{n} attempts")
    return list(got.values())


def test_started_and_finished_reports_in_one_request(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1), gpu(2)])
        user = co.token("consumer", "alice")
        jobs = [co.submit(user, {"command": ["true"]})["id"] for _ in range(3)]
        atts = _starts(co, node, 3)
        ok, failing, refused = atts
        fin = lambda a, code: {  # noqa: E731
            "attempt_id": a["attempt_id"],
            "fencing_token": a["fencing_token"],
            "exit_code": code,
            "runtime_s": 0.01,
        }
        results = _reports(
            co,
            node,
            started=[
                {"attempt_id": a["attempt_id"], "fencing_token": a["fencing_token"]}
                for a in (ok, failing)
            ]
            # a stale token: refused alone, as its own request would be
            + [{"attempt_id": refused["attempt_id"], "fencing_token": 99}],
            finished=[fin(ok, 0), fin(failing, 3)],
        )
        assert [(r["attempt_id"], r["kind"], r["status"]) for r in results] == [
            (ok["attempt_id"], "started", 200),
            (failing["attempt_id"], "started", 200),
            (refused["attempt_id"], "started", 409),
            (ok["attempt_id"], "finished", 200),
            (failing["attempt_id"], "finished", 200),
        ]
        assert results[2]["code"] == "stale_fencing_token"
        states = {a["job_id"]: co.job(user, a["job_id"])["state"] for a in atts}
        assert states == {
            ok["job_id"]: "succeeded",
            failing["job_id"]: "failed",
            refused["job_id"]: "assigned",  # the refused start changed nothing
        }
        assert set(states) == set(jobs)
        # a repeated finish is refused (the attempt is no longer current); the start of the
        # third, with its token, is taken
        again = _reports(
            co,
            node,
            started=[
                {"attempt_id": refused["attempt_id"], "fencing_token": refused["fencing_token"]}
            ],
            finished=[fin(ok, 0)],
        )
        assert [r["status"] for r in again] == [200, 409]
        assert co.job(user, refused["job_id"])["state"] == "running"


def test_only_an_agent_may_send_reports(db_url: str) -> None:
    with coordinator(db_url) as co:
        user = co.token("consumer", "alice")
        r = co.c.post(
            "/v1/agent/reports", json={"started": []}, headers={"Authorization": f"Bearer {user}"}
        )
        assert r.status_code == 403, r.text
