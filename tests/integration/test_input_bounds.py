"""Inputs the store cannot hold answer 422 naming the field, never a server error.

Each case here once answered 500 (found by the API fuzz test): a compute capability that is
not a number, one GPU index twice, integers past what an int32/int64 column holds, amounts
past what NUMERIC(20, 6) and int64 micro-credits hold, strings longer than their column
(PostgreSQL refuses those on insert).
"""

from __future__ import annotations

from typing import Any

from helpers import auth, coordinator, gpu, wait_for


def _reg(**gpu_fields: Any) -> dict[str, Any]:
    return {"name": "n", "gpus": [gpu(0) | gpu_fields], "agent_version": "test"}


def _invalid(r: Any, field: str, words: str = "") -> None:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["field"]) == ("invalid", field), err
    assert words in err["message"], err


def test_registration_bounds(db_url: str) -> None:
    with coordinator(db_url) as co:
        prov = auth(co.token("provider", "prov"))

        def register(body: dict[str, Any]) -> Any:
            return co.c.post("/v1/agent/register", json=body, headers=prov)

        _invalid(register(_reg(compute_capability="eight")), "gpus.0.compute_capability")
        _invalid(register(_reg(compute_capability=":")), "gpus.0.compute_capability")
        _invalid(register(_reg(memory_mb=2**31)), "gpus.0.memory_mb")
        _invalid(register(_reg(memory_mb=2**70)), "gpus.0.memory_mb")
        _invalid(register(_reg(index=2**40)), "gpus.0.index")
        _invalid(register(_reg(uuid="u" * 101)), "gpus.0.uuid")
        _invalid(register(_reg(name="n" * 201)), "gpus.0.name")
        twice = {"name": "n", "gpus": [gpu(0), gpu(0)]}
        _invalid(register(twice), "gpus", "GPU index 0 appears more than once")
        _invalid(register(_reg() | {"agent_version": "v" * 41}), "agent_version")
        _invalid(register(_reg() | {"site": "s" * 101}), "site")
        _invalid(register(_reg() | {"labels": {"k" * 101: "v"}}), "labels", "label name")
        r = co.c.get("/v1/nodes", headers=auth(co.admin))
        assert r.json() == [], "a refused registration left a node behind"

        ok = register(_reg(compute_capability="8.0", memory_mb=2**31 - 1))
        assert ok.status_code == 201, ok.text


def test_amount_and_integer_bounds(db_url: str) -> None:
    with coordinator(db_url) as co:
        admin = auth(co.admin)
        co.token("consumer", "alice")
        node = co.register(co.token("provider", "prov"))

        grant = {"account": "alice", "amount": "1e30"}
        _invalid(co.c.post("/v1/credits/grant", json=grant, headers=admin), "amount", "too large")
        grant["amount"] = "1000000000000"  # 10**12: 13 digits before the point
        _invalid(co.c.post("/v1/credits/grant", json=grant, headers=admin), "amount", "too large")
        grant["amount"] = "999999999999.999999"
        assert co.c.post("/v1/credits/grant", json=grant, headers=admin).status_code == 201

        quota = {"account": "alice", "monthly_spend": "1e30"}
        _invalid(co.c.put("/v1/quotas", json=quota, headers=admin), "monthly_spend", "too large")
        quota = {"account": "alice", "max_concurrent_gpus": 2**40}
        _invalid(co.c.put("/v1/quotas", json=quota, headers=admin), "max_concurrent_gpus")

        price = {"node_id": node.id, "price": "-1e30"}
        _invalid(co.c.put("/v1/prices", json=price, headers=admin), "price", "too large")

        r = co.c.post(
            "/v1/agent/attempts/att_x/finished",
            json={"fencing_token": 2**70, "exit_code": 0},
            headers=node.headers,
        )
        _invalid(r, "fencing_token")
        r = co.c.post(
            "/v1/agent/attempts/att_x/finished",
            json={"fencing_token": 1, "exit_code": 2**40},
            headers=node.headers,
        )
        _invalid(r, "exit_code")
        # log chunk ids are int32: PostgreSQL refuses a bigger bound in the query itself
        for after in (2**31, 2**70):
            r = co.c.get("/v1/jobs/job_x/logs", params={"after": after}, headers=admin)
            _invalid(r, "after")
        r = co.c.get("/v1/offers", params={"q": "x" * 1001}, headers=admin)
        _invalid(r, "q")


def test_heartbeat_telemetry_is_typed(db_url: str) -> None:
    """A reading that is no number would fail the fleet-wide telemetry flush: refused here."""
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"))

        def beat(reading: dict[str, Any]) -> Any:
            body = {"gpus": [{"index": 0} | reading]}
            return co.c.post("/v1/agent/heartbeat", json=body, headers=node.headers)

        _invalid(beat({"temperature_c": "hot"}), "gpus.0.temperature_c")
        _invalid(beat({"power_w": 1e300}), "gpus.0.power_w")
        assert beat({"temperature_c": 61.5, "energy_j": 12.0}).status_code == 200
        gpu0 = wait_for(
            lambda: next(
                (
                    g
                    for g in co.c.get("/v1/gpus", headers=auth(co.admin)).json()
                    if g["index"] == 0 and g["temperature_c"] == 61.5
                ),
                None,
            ),
            what="the reading to be flushed",
        )
        assert gpu0["node_id"] == node.id


def test_empty_idempotency_key(db_url: str) -> None:
    """An empty key once reached the unique index twice (a 500): it is refused by name."""
    with coordinator(db_url) as co:
        co.register(co.token("provider", "prov"))
        user = auth(co.token("consumer", "alice"))
        body = {"command": ["true"]}
        for _ in range(2):
            r = co.c.post("/v1/jobs", json=body, headers=user | {"Idempotency-Key": ""})
            _invalid(r, "idempotency-key")
        first = co.c.post("/v1/jobs", json=body, headers=user | {"Idempotency-Key": "k"})
        again = co.c.post("/v1/jobs", json=body, headers=user | {"Idempotency-Key": "k"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
