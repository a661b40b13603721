"""The fail-over transport: which replica a request goes to, what is sent again, stickiness."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from gpunet.failover import AsyncFailoverTransport, Coordinators, FailoverTransport, split_urls


class Replicas:
    """Replica a refuses connections, b answers 503, c answers; ``broken`` hosts time out
    after the request was sent."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.broken: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls.append(f"{host} {request.method} {request.url.raw_path.decode()}")
        assert request.headers["Host"] == request.url.netloc.decode()
        if host == "a":
            raise httpx.ConnectError("refused", request=request)
        if host in self.broken:
            raise httpx.ReadTimeout("no answer", request=request)
        if host == "b":
            return httpx.Response(503, text="no backend")
        return httpx.Response(200, json={"host": host, "body": request.content.decode()})


URLS = ["http://a", "http://b", "http://c"]


@pytest.fixture
def replicas() -> Iterator[Replicas]:
    yield Replicas()


def test_split_urls() -> None:
    assert split_urls(" http://a/, http://b ") == ["http://a", "http://b"]
    assert split_urls("http://a") == ["http://a"]
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_not_sent_and_503_go_to_the_next_and_the_client_sticks(replicas: Replicas) -> None:
    coords = Coordinators(URLS)
    t = FailoverTransport(coords, inner=httpx.MockTransport(replicas))
    with httpx.Client(base_url=URLS[0], transport=t) as c:
        r = c.post("/v1/jobs?x=1", content=b"spec")
        assert r.json() == {"host": "c", "body": "spec"}  # the POST went once to each
        assert replicas.calls == [
            "a POST /v1/jobs?x=1",
            "b POST /v1/jobs?x=1",
            "c POST /v1/jobs?x=1",
        ]
        assert coords.current == "http://c"
        replicas.calls.clear()
        assert c.get("/healthz").json()["host"] == "c"
        assert replicas.calls == ["c GET /healthz"]  # stuck to the one that answered


def test_a_request_that_may_have_been_acted_on_is_not_sent_again(replicas: Replicas) -> None:
    coords = Coordinators(URLS)
    coords.use(2)
    replicas.broken.add("c")
    t = FailoverTransport(coords, inner=httpx.MockTransport(replicas))
    with httpx.Client(base_url=URLS[0], transport=t) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/agent/attempts/x/finished", content=b"{}")
        assert replicas.calls == ["c POST /v1/agent/attempts/x/finished"]
        assert coords.current == "http://a"  # the next request starts elsewhere


def test_every_replica_down_answers_the_last_refusal(replicas: Replicas) -> None:
    coords = Coordinators(["http://a", "http://b"])
    t = FailoverTransport(coords, inner=httpx.MockTransport(replicas))
    with httpx.Client(base_url="http://a", transport=t) as c:
        assert c.get("/v1/whoami").status_code == 503  # b's answer, as a proxy gave it


def test_the_async_transport_fails_over_too(replicas: Replicas) -> None:
    coords = Coordinators(URLS)

    async def go() -> str:
        t = AsyncFailoverTransport(coords, inner=httpx.MockTransport(replicas))
        async with httpx.AsyncClient(transport=t) as c:
            # the agent addresses its first URL; the transport routes to the replica in use
            r = await c.post("http://a/v1/agent/heartbeat", content=b"hb")
            return str(r.json()["host"])

    assert asyncio.run(go()) == "c"
    assert coords.current == "http://c"
