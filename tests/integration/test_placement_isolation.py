"""Placement by isolation, trusted owners and container images, through the HTTP API: nodes
register with different settings, jobs land where they may, `jobs why` says why not."""

from __future__ import annotations

from typing import Any

from tests.integration.helpers import Coordinator, Node, auth, coordinator, gpu

PRIVATE = "unisolated node runs only its owner's jobs"


def _hello(c: Coordinator, node: Node, **settings: Any) -> None:
    body = {"name": "node", "gpus": [gpu(0)], "agent_version": "test"} | settings
    r = c.c.post("/v1/agent/hello", json=body, headers=node.headers)
    assert r.status_code == 200, r.text


def _nodes(c: Coordinator, token: str) -> dict[str, dict[str, Any]]:
    r = c.c.get("/v1/nodes", headers=auth(token))
    assert r.status_code == 200, r.text
    return {n["name"]: n for n in r.json()}


def _rejected(c: Coordinator, token: str, spec: dict[str, Any]) -> dict[str, Any]:
    r = c.c.post("/v1/jobs", json=spec, headers=auth(token))
    assert r.status_code == 422, r.text
    return dict(r.json()["error"])


def _why(c: Coordinator, token: str, job_id: str) -> dict[str, Any]:
    r = c.c.get(f"/v1/jobs/{job_id}/why", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _fleet(c: Coordinator) -> tuple[Node, Node, Node]:
    """alice's unisolated home node, bob's sandbox, carol's container node (no runtime yet)."""
    alice, bob, carol = (c.token("provider", a) for a in ("alice", "bob", "carol"))
    home = c.register(alice, [gpu(0)], name="home", accepts_unisolated=False)
    sand = c.register(bob, [gpu(0)], name="sand", isolation="sandbox")
    box = c.register(carol, [gpu(0)], name="box", isolation="container", accepts_unisolated=False)
    return home, sand, box


def test_nodes_store_their_settings_at_register_and_every_hello(db_url: str) -> None:
    with coordinator(db_url) as c:
        home, _sand, box = _fleet(c)
        user = c.token("consumer", "user")
        nodes = _nodes(c, user)
        assert {n: (v["isolation"], v["runtimes"], v["owner"]) for n, v in nodes.items()} == {
            "home": ("none", [], "alice"),
            "sand": ("sandbox", [], "bob"),
            "box": ("container", [], "carol"),
        }
        assert nodes["home"]["accepts_unisolated"] is False
        # an agent restarted with other settings: the coordinator takes the new ones
        _hello(c, box, isolation="container", runtimes=["podman", "docker"])
        _hello(c, home, accepts_unisolated=True)
        nodes = _nodes(c, user)
        assert nodes["box"]["runtimes"] == ["docker", "podman"]
        assert nodes["home"]["accepts_unisolated"] is True
        _hello(c, home)  # no settings: back to the defaults
        assert _nodes(c, user)["home"]["accepts_unisolated"] is False

        provider = c.token("provider", "dave")
        for body, field, reason in (
            ({"isolation": "vm"}, "isolation", "'none', 'sandbox' or 'container'"),
            ({"runtimes": ["Pod Man"]}, "runtimes", "'Pod Man' is not a runtime name"),
            ({"runtimes": [f"r{i}" for i in range(9)]}, "runtimes", "at most 8"),
            ({"accepts_unisolated": "maybe"}, "accepts_unisolated", "boolean"),
        ):
            reg = {"name": "n", "gpus": [gpu(0)]} | body
            r = c.c.post("/v1/agent/register", json=reg, headers=auth(provider))
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["field"] == field and reason in err["message"], err
        assert "n" not in _nodes(c, c.admin)


def test_jobs_land_by_isolation_owner_and_runtime_and_why_says_so(db_url: str) -> None:
    with coordinator(db_url) as c:
        home, sand, box = _fleet(c)
        user = c.token("consumer", "user")

        # no node has a container runtime: an image job can never run, and says why at once
        image_job = {
            "name": "img",
            "command": ["python", "train.py"],
            "image": "ghcr.io/acme/train:1.2",
            "resources": {"cpus": 4, "memory_gb": 16},
        }
        err = _rejected(c, user, image_job)
        assert err["code"] == "unschedulable" and err["field"] == "resources"
        assert "1 no container runtime" in err["message"]
        assert "1 isolation sandbox < required container" in err["message"]
        assert f"1 {PRIVATE}" not in err["message"]  # home fails isolation first

        # carol's agent comes back with podman: the image job lands there
        _hello(c, box, isolation="container", runtimes=["podman"])
        job = c.submit(user, image_job)
        att = c.next_start(box)
        assert att["job_id"] == job["id"]
        # the agent receives everything it needs to run it in a container
        assert att["spec"]["image"] == "ghcr.io/acme/train:1.2"
        assert att["spec"]["resources"]["isolation"] == "container"
        assert (att["spec"]["resources"]["cpus"], att["spec"]["resources"]["memory_gb"]) == (4, 16)
        shown = c.job(user, job["id"])["spec"]
        assert shown["image"] == image_job["image"]

        # a second image job waits (box is busy) and `jobs why` names every reason
        waiting = c.submit(user, image_job | {"name": "img2"})
        why = _why(c, user, waiting["id"])
        assert why["state"] == "queued"
        assert why["rejections"] == {
            "busy": 1,
            "isolation none < required container": 1,
            "isolation sandbox < required container": 1,
        }
        assert why["summary"].startswith("0/3 GPUs fit")

        # a stranger's plain job may not use alice's unisolated node: it goes to bob's sandbox
        plain = c.submit(user, {"name": "plain", "command": ["true"]})
        att = c.next_start(sand)
        assert att["job_id"] == plain["id"]
        # ... and with sand and box busy, it would wait, explaining the private node
        more = c.submit(user, {"name": "more", "command": ["true"]})
        why = _why(c, user, more["id"])
        assert why["rejections"] == {"busy": 2, PRIVATE: 1}

        # alice's own job runs on her unisolated node
        alice_user = c.token("consumer", "alice")
        mine = c.submit(alice_user, {"name": "mine", "command": ["true"]})
        att = c.next_start(home)
        assert att["job_id"] == mine["id"]


def test_trusted_owners_are_checked_at_submit_and_at_placement(db_url: str) -> None:
    with coordinator(db_url) as c:
        home, sand, box = _fleet(c)
        user = c.token("consumer", "user")

        err = _rejected(c, user, {"command": ["true"], "resources": {"owners": ["nobody"]}})
        assert err["field"] == "resources.owners" and "no account named 'nobody'" in err["message"]
        # trusting only alice, whose one node runs only her own jobs: never runs
        err = _rejected(c, user, {"command": ["true"], "resources": {"owners": ["alice"]}})
        assert err["code"] == "unschedulable"
        assert "2 owner not trusted by the job" in err["message"]
        assert f"1 {PRIVATE}" in err["message"]

        # trusting carol: her container node, never bob's sandbox
        spec = {"command": ["true"], "resources": {"owners": ["carol"], "isolation": "sandbox"}}
        job = c.submit(user, spec)
        att = c.next_start(box)
        assert att["job_id"] == job["id"]
        assert att["spec"]["resources"]["owners"] == ["carol"]
        second = c.submit(user, spec | {"name": "second"})
        why = _why(c, user, second["id"])
        # each GPU counted once, under the first filter it fails (the owner comes first)
        assert why["rejections"] == {"busy": 1, "owner not trusted by the job": 2}
        assert c.job(user, second["id"])["state"] == "queued"
        assert c.work(sand)["start"] == []


def test_offers_filter_by_isolation_runtime_and_owner(db_url: str) -> None:
    with coordinator(db_url) as c:
        _home, _sand, box = _fleet(c)
        _hello(c, box, isolation="container", runtimes=["podman"])
        user = c.token("consumer", "user")

        def names(q: str) -> list[str]:
            r = c.c.get("/v1/offers", params={"q": q}, headers=auth(user))
            assert r.status_code == 200, r.text
            return sorted(o["owner"] for o in r.json())

        assert names("isolation>=sandbox") == ["bob", "carol"]
        assert names("isolation<sandbox") == ["alice"]
        assert names("runtime=podman") == ["carol"]
        assert names("owner=alice") == ["alice"]
        assert names("owner!=alice isolation>=none") == ["bob", "carol"]
        r = c.c.get("/v1/offers", params={"q": "owner=carol"}, headers=auth(user))
        (row,) = r.json()
        assert (row["isolation"], row["runtimes"]) == ("container", ["podman"])
        r = c.c.get("/v1/offers", params={"q": "isolation>=vm"}, headers=auth(user))
        assert r.status_code == 422 and r.json()["error"]["field"] == "query"
