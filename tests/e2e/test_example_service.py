"""The example model server (examples/service): real processes on free ports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.procs import free_port, wait_for

pytestmark = pytest.mark.e2e

SERVER = Path(__file__).resolve().parents[2] / "examples" / "service" / "server.py"
TEXTS = [f"request {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(24)]


class Server:
    def __init__(self, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self.p = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(self.port), *flags],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200,
            30,
            f"the example server {flags}",
        )

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/stats", timeout=10).json())

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    d = tmp_path_factory.mktemp("service")
    # a longer wait than the default makes batches certain on a busy machine
    batched = Server(d / "batched.log", "--max-wait-ms", "20")
    try:
        single = Server(d / "single.log", "--no-batching")
    except BaseException:
        batched.stop()
        raise
    yield batched, single
    batched.stop()
    single.stop()


async def embed_all(url: str, texts: list[str]) -> list[list[float]]:
    """Every text in its own request, all at once."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": t}) for t in texts))
    for r in rs:
        assert r.status_code == 200, r.text
    return [r.json()["data"][0]["embedding"] for r in rs]


async def complete_all(url: str, prompts: list[str], n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        rs = await asyncio.gather(
            *(c.post("/v1/completions", json={"prompt": p, "max_tokens": n}) for p in prompts)
        )
    return [r.json()["choices"][0]["text"] for r in rs]


def stream(url: str, prompt: str, n: int) -> list[str]:
    """The pieces of a streamed completion, as the events arrive."""
    pieces = []
    with httpx.stream(
        "POST",
        url + "/v1/completions",
        json={"prompt": prompt, "max_tokens": n, "stream": True},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                pieces.append(line.removeprefix("data: "))
    assert pieces[-1] == "[DONE]"
    events = [json.loads(p) for p in pieces[:-1]]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    return [e["choices"][0]["text"] for e in events[:-1]]


def test_concurrent_requests_are_batched(servers: tuple[Server, Server]) -> None:
    batches = {}
    for s in servers:
        before = s.stats()
        asyncio.run(embed_all(s.url, TEXTS))
        after = s.stats()
        assert after["calls"] - before["calls"] == len(TEXTS)
        batches[s.url] = after["batches"] - before["batches"]
    batched, single = servers
    assert batched.stats()["largest_batch"] > 1
    assert batches[batched.url] < len(TEXTS)
    assert single.stats()["largest_batch"] == 1
    assert batches[single.url] == len(TEXTS)


def test_answers_are_identical_with_and_without_batching(servers: tuple[Server, Server]) -> None:
    batched, single = servers
    a = asyncio.run(embed_all(batched.url, TEXTS))
    b = asyncio.run(embed_all(single.url, TEXTS))
    assert a == b  # exactly: the model's sums are integers
    assert len({tuple(v) for v in a}) == len(TEXTS)  # and they differ from text to text
    assert all(abs(sum(x * x for x in v) - 1) < 1e-9 for v in a)
    prompts = TEXTS[:6]
    ca = asyncio.run(complete_all(batched.url, prompts, 12))
    cb = asyncio.run(complete_all(single.url, prompts, 12))
    assert ca == cb
    assert all(len(t.split()) == 12 for t in ca)
    # a list input is batched too, in order
    r = httpx.post(batched.url + "/v1/embeddings", json={"input": TEXTS[:3]}, timeout=30)
    assert [d["embedding"] for d in r.json()["data"]] == a[:3]


def test_a_streamed_completion_arrives_piece_by_piece(servers: tuple[Server, Server]) -> None:
    batched, single = servers
    pieces = stream(batched.url, "stream me", 8)
    assert len(pieces) == 8 and all(p.startswith(" ") for p in pieces)
    whole = httpx.post(
        single.url + "/v1/completions", json={"prompt": "stream me", "max_tokens": 8}, timeout=30
    ).json()
    assert "".join(pieces) == whole["choices"][0]["text"]
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}


def test_models_and_errors(servers: tuple[Server, Server]) -> None:
    url = servers[0].url
    ids = [m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]]
    r = httpx.post(url + "/v1/embeddings", json={"input": "x", "model": "other"}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url + "/v1/embeddings", json={"input": "x", "model": ids[0]}, timeout=10)
    assert r.status_code == 200
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 0}, timeout=10)
    assert r.status_code == 422
