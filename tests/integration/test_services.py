"""Services through the API: deploy, replicas as jobs spread over nodes, readiness, the
gateway's routing and retries (with a fake tunnel), scale, stop, tenancy."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gpunet.errors import NotForwarded
from gpunet.services.gateway import Gateway
from tests.integration.helpers import Coordinator, Node, auth, coordinator, wait_for

SPEC: dict[str, Any] = {
    "name": "echo",
    "command": ["python", "-m", "http.server"],
    "service": {
        "replicas": {"min": 2, "max": 4},
        "readiness": {"path": "/healthz"},
        "model": "tiny-echo",
    },
}


class FakeAnswer:
    def __init__(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body

    async def aclose(self) -> None:
        return None


class FakeTunnels:
    """Stands in for the agents' tunnels: records each forwarded request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str, dict[str, str], bytes]] = []
        self.refuse: set[str] = set()  # attempts whose replica refuses the connection

    async def __call__(
        self,
        node: str,
        att: str,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> FakeAnswer:
        if att in self.refuse:
            raise NotForwarded("connection refused")
        self.calls.append((node, att, method, path, dict(headers), body))
        return FakeAnswer(200, f"{att} {method} {path}".encode(), [("content-type", "text/plain")])


def _start_replicas(
    co: Coordinator, nodes: list[Node], n: int
) -> list[tuple[Node, dict[str, Any]]]:
    """Long-poll every node until ``n`` replicas were handed out; report them running."""
    got: list[tuple[Node, dict[str, Any]]] = []

    def poll() -> bool:
        for node in nodes:
            for item in co.work(node, wait=0.2)["start"]:
                co.report(node, item, "started")
                got.append((node, item))
        return len(got) >= n

    wait_for(poll, poll=0, timeout=15, what=f"{n} replicas placed")
    return got


def _gateway(co: Coordinator) -> Gateway:
    gw: Gateway = co.c.app.state.runtime.gateway  # type: ignore[attr-defined]
    return gw


def _ready(co: Coordinator, node: Node, attempts: list[str], ready: list[str]) -> None:
    r = co.c.post(
        "/v1/agent/heartbeat",
        json={"attempts": attempts, "ready": ready},
        headers=node.headers,
    )
    assert r.status_code == 200, r.text


@pytest.fixture
def co(db_url: str) -> Any:
    with coordinator(db_url) as c:
        yield c


def test_a_service_runs_spread_answers_through_the_gateway_and_stops(co: Coordinator) -> None:
    prov = co.token("provider", "owner")
    alice = co.token("consumer", "alice")
    nodes = [co.register(prov, name=f"n{i}") for i in range(2)]
    fake = FakeTunnels()
    _gateway(co).forward = fake

    r = co.c.post("/v1/services", json=SPEC, headers=auth(alice))
    assert r.status_code == 201, r.text
    assert r.json()["desired"] == 2 and r.json()["path"] == "/services/echo/"
    placed = _start_replicas(co, nodes, 2)
    assert {n.id for n, _ in placed} == {n.id for n in nodes}  # spread: one per node
    for node, item in placed:
        _ready(co, node, [item["attempt_id"]], [item["attempt_id"]])
        assert item["spec"]["service"]["readiness"]["path"] == "/healthz"

    def shows_ready() -> dict[str, Any] | None:
        d = co.c.get("/v1/services/echo", headers=auth(alice)).json()
        return d if d["ready"] == 2 else None

    detail = wait_for(shows_ready, what="2 ready replicas")
    assert {x["node_id"] for x in detail["replicas"]} == {n.id for n in nodes}
    assert detail["decisions"][0]["reason"] == "deployed: min 2"
    wait_for(lambda: len(_gateway(co).by_id[detail["id"]].replicas) == 2)

    # requests are spread over both replicas (ties go by a hash of a per-request counter: 40
    # requests all on one replica would be a 1 in 2^39 chance); the caller's token never
    # reaches them
    for i in range(40):
        resp = co.c.post(f"/services/echo/v1/x?i={i}", content=b"\x00\xff", headers=auth(alice))
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-gpunet-replica"] in resp.text
    assert len({c[1] for c in fake.calls}) == 2
    assert all("authorization" not in {k.lower() for k in c[4]} for c in fake.calls)
    assert fake.calls[0][3] == "/v1/x?i=0" and fake.calls[0][5] == b"\x00\xff"
    assert all(c[4]["x-forwarded-prefix"] == "/services/echo" for c in fake.calls)

    # the OpenAI-compatible routes, by model
    models = co.c.get("/v1/models", headers=auth(alice)).json()
    assert [m["id"] for m in models["data"]] == ["tiny-echo"]
    resp = co.c.post(
        "/v1/embeddings", json={"model": "tiny-echo", "input": "hi"}, headers=auth(alice)
    )
    assert resp.status_code == 200 and resp.text.endswith("POST /v1/embeddings")
    miss = co.c.post("/v1/embeddings", json={"model": "other"}, headers=auth(alice))
    assert miss.status_code == 404 and miss.json()["error"]["field"] == "model"

    # a replica refusing the connection: the request is retried on the other one
    first = placed[0][1]["attempt_id"]
    fake.refuse.add(first)
    fake.calls.clear()
    for _ in range(4):
        assert co.c.get("/services/echo/", headers=auth(alice)).status_code == 200
    assert {c[1] for c in fake.calls} == {placed[1][1]["attempt_id"]}

    # a replica failing its probe leaves the rotation
    fake.refuse.clear()
    _ready(co, placed[0][0], [first], [])
    wait_for(lambda: co.c.get("/v1/services/echo", headers=auth(alice)).json()["ready"] == 1)
    fake.calls.clear()
    wait_for(lambda: len(_gateway(co).by_id[detail["id"]].replicas) == 1)
    for _ in range(3):
        co.c.get("/services/echo/", headers=auth(alice))
    assert {c[1] for c in fake.calls} == {placed[1][1]["attempt_id"]}

    # scale down to 1: one replica is told to stop (the one not ready)
    r = co.c.post("/v1/services/echo/scale", json={"min": 1, "max": 1}, headers=auth(alice))
    assert r.status_code == 200 and r.json()["desired"] == 1, r.text

    def stop_sent() -> list[str]:
        return [s["attempt_id"] for s in co.work(placed[0][0], wait=0.2)["stop"]]

    assert wait_for(stop_sent, what="the extra replica stopped") == [first]

    # stop: every replica is cancelled; the gateway no longer knows it
    r = co.c.post("/v1/services/echo/stop", headers=auth(alice))
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    second = placed[1][1]["attempt_id"]
    assert wait_for(lambda: [s["attempt_id"] for s in co.work(placed[1][0], wait=0.2)["stop"]]) == [
        second
    ]
    wait_for(lambda: co.c.get("/services/echo/", headers=auth(alice)).status_code == 404)
    assert co.c.get("/v1/services", headers=auth(alice)).json() == []


def test_another_account_sees_a_service_exactly_like_a_missing_one(co: Coordinator) -> None:
    prov = co.token("provider", "owner")
    alice, bob = co.token("consumer", "alice"), co.token("consumer", "bob")
    co.register(prov)
    spec = {**SPEC, "service": {**SPEC["service"], "replicas": {"min": 0, "max": 1}}}
    assert co.c.post("/v1/services", json=spec, headers=auth(alice)).status_code == 201
    wait_for(lambda: _gateway(co).by_name)
    for path in ("/services/echo/x", "/v1/services/echo"):
        theirs = co.c.get(path, headers=auth(bob))
        missing = co.c.get(path.replace("echo", "nosuch"), headers=auth(bob))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
        assert theirs.json()["error"]["field"] == missing.json()["error"]["field"]
    assert co.c.get("/v1/models", headers=auth(bob)).json()["data"] == []
    # bob may deploy his own "echo": names are per account
    assert co.c.post("/v1/services", json=spec, headers=auth(bob)).status_code == 201


def test_bad_service_specs_name_the_field(co: Coordinator) -> None:
    alice = co.token("consumer", "alice")
    co.register(co.token("provider", "owner"))
    cases = [
        ({**SPEC, "name": "Echo_1"}, "name"),
        ({**SPEC, "service": {"replicas": {"min": 3, "max": 1}}}, "service.replicas.max"),
        ({**SPEC, "service": {"readiness": {"path": "healthz"}}}, "service.readiness.path"),
        ({**SPEC, "array": 3}, "array"),
        ({**SPEC, "service": {"bogus": 1}}, "service.bogus"),
    ]
    for body, field in cases:
        r = co.c.post("/v1/services", json=body, headers=auth(alice))
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (field, r.text)
    r = co.c.post("/v1/jobs", json=SPEC, headers=auth(alice))
    assert r.status_code == 422 and r.json()["error"]["field"] == "service"
    assert co.c.post("/v1/services", json=SPEC, headers=auth(alice)).status_code == 201
    again = co.c.post("/v1/services", json=SPEC, headers=auth(alice))
    assert again.status_code == 409 and "services stop echo" in again.json()["error"]["message"]


def test_scale_from_zero_holds_the_request_until_a_replica_is_ready(co: Coordinator) -> None:
    prov = co.token("provider", "owner")
    alice = co.token("consumer", "alice")
    node = co.register(prov)
    fake = FakeTunnels()
    _gateway(co).forward = fake
    spec = {**SPEC, "service": {**SPEC["service"], "replicas": {"min": 0, "max": 2}}}
    assert co.c.post("/v1/services", json=spec, headers=auth(alice)).json()["desired"] == 0
    answers: list[int] = []
    t = threading.Thread(
        target=lambda: answers.append(
            co.c.get("/services/echo/hello", headers=auth(alice)).status_code
        )
    )
    t.start()
    # the request at zero makes the autoscaler want a replica at once
    item = co.next_start(node)
    co.report(node, item, "started")
    assert not answers  # still held
    _ready(co, node, [item["attempt_id"]], [item["attempt_id"]])
    t.join(timeout=15)
    assert answers == [200]
    d = co.c.get("/v1/services/echo", headers=auth(alice)).json()
    assert any("request at zero" in x["reason"] for x in d["decisions"]), d["decisions"]
    text = co.c.get("/metrics").text
    assert 'gpunet_service_requests_total{code="200",service="echo"} 1.0' in text


def test_a_service_key_calls_its_service_and_nothing_else(co: Coordinator) -> None:
    alice = co.token("consumer", "alice")
    node = co.register(co.token("provider", "owner"))
    fake = FakeTunnels()
    _gateway(co).forward = fake
    one = {**SPEC, "service": {**SPEC["service"], "replicas": {"min": 1, "max": 1}}}
    other = {**one, "name": "other", "service": {**one["service"], "model": "other-model"}}
    for spec in (one, other):
        assert co.c.post("/v1/services", json=spec, headers=auth(alice)).status_code == 201
    r = co.c.post("/v1/services/echo/keys", json={"name": "web"}, headers=auth(alice))
    assert r.status_code == 201, r.text
    key = r.json()
    placed = _start_replicas(co, [node], 2)
    atts = [i["attempt_id"] for _, i in placed]
    _ready(co, node, atts, atts)
    wait_for(lambda: all(len(rt.replicas) == 1 for rt in _gateway(co).by_id.values()))
    svc_key = auth(key["token"])
    assert co.c.get("/services/echo/x", headers=svc_key).status_code == 200
    # not the account's other service, not the API
    assert co.c.get("/services/other/x", headers=svc_key).status_code == 404
    for path in ("/v1/jobs", "/v1/services", "/v1/whoami", "/v1/tokens"):
        resp = co.c.get(path, headers=svc_key)
        assert resp.status_code == 403, (path, resp.text)
    models = co.c.get("/v1/models", headers=svc_key).json()["data"]
    assert [m["id"] for m in models] == ["tiny-echo"]
    bad = co.c.post("/v1/embeddings", json={"model": "other-model"}, headers=svc_key)
    assert bad.status_code == 404
    # another account cannot make a key for it; revoking ends it at once
    bob = co.token("consumer", "bob")
    assert co.c.post("/v1/services/echo/keys", json={}, headers=auth(bob)).status_code == 404
    assert co.c.delete(f"/v1/tokens/{key['id']}", headers=auth(alice)).status_code == 200
    assert co.c.get("/services/echo/x", headers=svc_key).status_code == 401
