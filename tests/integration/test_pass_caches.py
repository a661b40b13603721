"""What the coordinator keeps between submits and passes follows every change that matters:
the submit-time capacity check sees a new node, a price change or a GPU taken out of service
at once, and the scheduler pass never places on a GPU drained or priced out meanwhile."""

from __future__ import annotations

from helpers import auth, coordinator, gpu

from gpunet.store.tables import Gpu


def test_the_capacity_check_follows_the_fleet(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        user = co.token("consumer", "alice")
        node = co.register(provider, [gpu(0)], name="a")
        h100 = {"command": ["true"], "resources": {"gpus": 1, "gpu_models": ["H100-80GB"]}}
        r = co.c.post("/v1/jobs", json=h100, headers=auth(user))
        assert r.status_code == 422 and r.json()["error"]["field"] == "resources", r.text

        # a node with that model joins: accepted at once
        co.register(provider, [gpu(0, model="H100-80GB")], name="b")
        assert co.c.post("/v1/jobs", json=h100, headers=auth(user)).status_code == 201

        # a price cap under the only A100's price: refused; once the price drops: accepted
        r = co.c.put("/v1/prices", json={"node_id": node.id, "price": "5"}, headers=auth(provider))
        assert r.status_code == 200, r.text
        cheap = {"command": ["true"], "max_price": "1", "resources": {"gpu_models": ["A100-80GB"]}}
        assert co.c.post("/v1/jobs", json=cheap, headers=auth(user)).status_code == 422
        r = co.c.put(
            "/v1/prices", json={"node_id": node.id, "price": "0.5"}, headers=auth(provider)
        )
        assert r.status_code == 200, r.text
        assert co.c.post("/v1/jobs", json=cheap, headers=auth(user)).status_code == 201

        # the GPU retired (gone): no job for that model fits any more
        with co.db.transaction() as s:
            for g in s.query(Gpu).filter(Gpu.node_id == node.id):
                g.lifecycle_state = "retired"
        assert co.c.post("/v1/jobs", json=cheap, headers=auth(user)).status_code == 422


def test_a_pass_never_places_on_a_gpu_drained_since_the_last_pass(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        user = co.token("consumer", "alice")
        node = co.register(provider, [gpu(0), gpu(1)])
        first = co.submit(user, {"command": ["true"]})
        att = co.next_start(node)  # a pass ran: the fleet's views are cached
        assert co.report(node, att, "started").status_code == 200
        with co.db.transaction() as s:
            for g in s.query(Gpu).filter(Gpu.node_id == node.id):
                g.drained = True
        job = co.submit(user, {"command": ["true"]})
        found = co.work(node, wait=1.0)
        assert found["start"] == []
        assert co.job(user, job["id"])["state"] == "queued"
        with co.db.transaction() as s:
            for g in s.query(Gpu).filter(Gpu.node_id == node.id):
                g.drained = False
        nxt = co.next_start(node)
        assert nxt["job_id"] == job["id"] and nxt["job_id"] != first["id"]
