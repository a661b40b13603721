"""Offers and reputation through the API: the public market, its query language, and a node's
score falling after it loses an attempt."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gpunet.store.tables import Gpu, Node
from tests.integration.helpers import Coordinator, auth, coordinator, gpu, wait_for


def _offers(c: Coordinator, token: str, q: str = "", sort: str | None = None) -> Any:
    params = {"q": q} | ({"sort": sort} if sort else {})
    return c.c.get("/v1/offers", params=params, headers=auth(token))


def _ids(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return [o["gpu_id"] for o in r.json()]


def test_offers_are_public_filtered_and_sorted(db_url: str) -> None:
    with coordinator(db_url) as c:
        p1, p2 = c.token("provider", "owner1"), c.token("provider", "owner2")
        user = c.token("consumer", "alice")
        a = c.register(p1, [gpu(0), gpu(1)], name="a")
        b = c.register(p2, [gpu(0, "RTX-4090", 24_000)], name="b")
        t4 = c.register(p2, [gpu(0, "T4", 16_000)], name="c")
        for tok, node, price in ((p1, a, "1.2"), (p2, b, "0.4")):
            r = c.c.put("/v1/prices", json={"node_id": node.id, "price": price}, headers=auth(tok))
            assert r.status_code == 200, r.text
        with c.db.transaction() as s:
            for g in s.scalars(select(Gpu).where(Gpu.node_id == a.id)):
                g.tier = "training"
            node_a = s.get(Node, a.id)
            assert node_a is not None
            node_a.site = "eu-west"
        with c.db.sessions() as s:
            ids = {
                n: sorted(s.scalars(select(Gpu.id).where(Gpu.node_id == n)))
                for n in (a.id, b.id, t4.id)
            }
        a_gpus, (b_gpu,), (t4_gpu,) = ids[a.id], ids[b.id], ids[t4.id]

        # a consumer sees every owner's GPUs; default order: price, then reliability
        r = _offers(c, user)
        assert _ids(r) == [t4_gpu, b_gpu, *a_gpus]
        row = r.json()[-1]
        assert "attempt_id" not in row
        assert row["model"] == "A100-80GB" and row["memory_gb"] == 80.0
        assert row["price_per_hour"] == "1.200000" and row["tier"] == "training"
        assert row["site"] == "eu-west" and row["state"] == "idle"
        assert 0.0 <= row["reliability"] <= 1.0

        assert _ids(_offers(c, user, "gpu=a100-80gb")) == a_gpus
        assert _ids(_offers(c, user, "memory>=40 price<=1.5")) == a_gpus
        assert _ids(_offers(c, user, "memory>=40 price<=1")) == []
        assert _ids(_offers(c, user, "price<=0.5")) == [t4_gpu, b_gpu]
        assert _ids(_offers(c, user, "tier=training site=eu-west")) == a_gpus
        assert _ids(_offers(c, user, "reliability>=0 available=yes", sort="-memory")) == [
            *a_gpus,
            b_gpu,
            t4_gpu,
        ]

        r = _offers(c, user, "gpu=A100-80GB colour=red")
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["field"] == "query"
        assert "'colour=red'" in err["message"] and "unknown field 'colour'" in err["message"]
        r = _offers(c, user, "memory>=lots")
        assert r.status_code == 422 and "bad value 'lots'" in r.json()["error"]["message"]
        r = _offers(c, user, sort="colour")
        assert r.status_code == 422 and r.json()["error"]["field"] == "sort"
        assert c.c.get("/v1/offers").status_code == 401

        rep = c.c.get(f"/v1/nodes/{b.id}/reputation", headers=auth(user))
        assert rep.status_code == 200, rep.text
        body = rep.json()
        assert [x["name"] for x in body["components"]] == [
            "uptime",
            "host_faults",
            "benchmark",
            "incidents",
            "availability",
        ]
        assert "neutral prior" in body["explanation"]
        assert c.c.get("/v1/nodes/nope/reputation", headers=auth(user)).status_code == 404


LEASE = {"lease_timeout_s": 1.0, "reaper_interval_s": 0.2}


def _score(c: Coordinator, token: str, node_id: str) -> dict[str, Any]:
    r = c.c.get(f"/v1/nodes/{node_id}/reputation", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_reputation_drops_after_a_lost_attempt_and_says_why(db_url: str) -> None:
    with coordinator(db_url, **LEASE) as c:
        provider = c.token("provider", "prov")
        user = c.token("consumer", "alice")
        node = c.register(provider, [gpu(0)], name="flaky")
        c.heartbeat(node)
        before = _score(c, user, node.id)
        job = c.submit(user, {"command": ["sleep", "60"], "max_retries": 0})
        att = c.next_start(node, keep_alive=True)
        c.heartbeat(node, [att["attempt_id"]])
        assert c.report(node, att, "started").status_code == 200
        wait_for(lambda: c.job(user, job["id"])["state"] == "failed", what="the lease to lapse")
        after = _score(c, user, node.id)
        assert after["score"] < before["score"]
        assert "1 of 1 attempts lost to host faults" in after["explanation"]
        faults = next(x for x in after["components"] if x["name"] == "host_faults")
        assert faults["value"] < 0.9
        offer = c.c.get("/v1/offers", params={"q": f"node={node.id}"}, headers=auth(user)).json()
        # the node stays offline, so its uptime keeps falling a little between calls
        assert abs(offer[0]["reliability"] - after["score"]) < 1e-3
        assert offer[0]["state"] == "offline"
        nodes = c.c.get("/v1/nodes", headers=auth(c.admin)).json()
        shown = next(n for n in nodes if n["id"] == node.id)["reliability"]
        assert abs(shown - after["score"]) < 1e-3


def test_a_reliability_floor_keeps_jobs_off_the_low_reputation_node(db_url: str) -> None:
    with coordinator(db_url, **LEASE) as c:
        provider = c.token("provider", "prov")
        user = c.token("consumer", "alice")
        flaky = c.register(provider, [gpu(0)], name="flaky")
        c.heartbeat(flaky)
        lost = c.submit(user, {"command": ["sleep", "60"], "max_retries": 0})
        att = c.next_start(flaky, keep_alive=True)
        assert c.report(flaky, att, "started").status_code == 200
        wait_for(lambda: c.job(user, lost["id"])["state"] == "failed", what="the lease to lapse")
        c.heartbeat(flaky)  # back online, with a lost attempt on its record
        good = c.register(provider, [gpu(0)], name="good")
        c.heartbeat(good)
        assert _score(c, user, flaky.id)["score"] < 0.9 <= _score(c, user, good.id)["score"]

        spec = {"command": ["sleep", "60"], "min_reliability": 0.9}
        first = c.submit(user, spec)

        def placed() -> dict[str, Any] | None:
            c.heartbeat(flaky)
            c.heartbeat(good)
            found = c.work(good, wait=0.3)
            return found["start"][0] if found["start"] else None

        att = wait_for(placed, what="the job on the good node")
        assert att["job_id"] == first["id"]
        c.heartbeat(good, [att["attempt_id"]])

        # the good node is busy: the next job waits rather than take the flaky node
        second = c.submit(user, spec)

        def explained() -> dict[str, Any] | None:
            c.heartbeat(flaky)
            c.heartbeat(good, [att["attempt_id"]])
            r = c.c.get(f"/v1/jobs/{second['id']}/why", headers=auth(user))
            assert r.status_code == 200, r.text
            w = dict(r.json())
            return w if "below reliability floor" in w["summary"] else None

        why = explained() or wait_for(explained, what="the reliability reason")
        assert why["rejections"] == {"below reliability floor": 1, "busy": 1}
        assert c.job(user, second["id"])["state"] == "queued"
        assert c.work(flaky)["start"] == []

        r = c.c.post("/v1/jobs", json=spec | {"min_reliability": 1.5}, headers=auth(user))
        assert r.status_code == 422 and "min_reliability" in r.text
