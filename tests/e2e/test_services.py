"""End to end: services on real agents, reached through the coordinator's gateway and the
agents' own tunnels. Two replicas spread over agents answer; requests go to both; after
kill -9 of one replica's agent no request that was not on it fails and a replacement comes up;
a streamed answer (SSE) arrives chunk by chunk; load adds replicas, idleness takes them away,
down to zero, and a request at zero brings one back."""

from __future__ import annotations

import shutil
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import only_on
from tests.e2e.procs import Network, three_agents, wait_for

pytestmark = pytest.mark.e2e

APP = Path(__file__).with_name("service_app.py")


def _spec(root: Path, name: str, service: str) -> Path:
    work = root / f"svc-{name}"
    work.mkdir()
    shutil.copy(APP, work / "app.py")
    spec = work / "service.yaml"
    spec.write_text(
        textwrap.dedent(f"""
            name: {name}
            command: ["python3", "app.py"]
            max_retries: 3
        """)
        + textwrap.dedent(service)
    )
    return spec


def _show(net: Network, name: str) -> dict[str, Any]:
    return dict(net.cli_json(net.user, "services", "show", name))


def _polled(net: Network, name: str) -> dict[str, Any]:
    """The service as ``_show`` has it, read from the API: for polls (a CLI process a poll
    costs seconds on a loaded host)."""
    return dict(net.api(net.user, f"/v1/services/{name}"))


def _ready(net: Network, name: str, n: int, timeout: float = 60) -> dict[str, Any]:
    """Once ``n`` replicas are ready (polled on the API): the service as the CLI shows it."""
    wait_for(lambda: _polled(net, name)["ready"] == n, timeout, f"{n} ready replica(s) of {name}")

    def ok() -> dict[str, Any] | None:
        d = _show(net, name)
        return d if d["ready"] == n else None

    return wait_for(ok, 30, f"the CLI to show {n} ready replica(s) of {name}")


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    with three_agents(tmp_path, db_url) as n:
        yield n


@only_on("postgres")  # the other on SQLite
def test_replicas_answer_through_the_gateway_and_survive_a_lost_node(
    net: Network, tmp_path: Path
) -> None:
    spec = _spec(
        tmp_path,
        "echo",
        """
        service:
          replicas: {min: 2, max: 2}
          readiness: {path: /healthz, period_s: 0.5}
        """,
    )
    r = net.cli(net.user, "submit", str(spec))
    assert r.returncode == 0, r.stderr
    assert "/services/echo/" in r.stdout
    d = _ready(net, "echo", 2)
    nodes = {x["node_id"] for x in d["replicas"]}
    assert len(nodes) == 2  # spread over two agents
    url = f"{net.url}/services/echo"
    auth = {"Authorization": f"Bearer {net.user}"}
    with httpx.Client(headers=auth, timeout=30) as c:
        seen = {c.get(f"{url}/id").text for _ in range(30)}
        assert seen == {x["attempt_id"] for x in d["replicas"]}  # both took requests

        # a stream arrives chunk by chunk, as the replica writes it
        arrivals = []
        with c.stream("GET", f"{url}/sse?n=5&gap=0.4") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic())
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert len(arrivals) == 5 and min(gaps) > 0.2, gaps

        # another account's consumer: 404, exactly like a missing service
        bob = net.token("consumer", "bob")
        theirs = httpx.get(f"{url}/id", headers={"Authorization": f"Bearer {bob}"})
        missing = httpx.get(
            f"{net.url}/services/nosuch/id", headers={"Authorization": f"Bearer {bob}"}
        )
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]

        # kill -9 the agent of one replica while requests keep coming
        victim = d["replicas"][0]
        agent = next(
            name
            for name in net.agents
            if net.agent_credentials(name)["node_id"] == victim["node_id"]
        )
        failures: list[str] = []
        answered = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal answered
            with httpx.Client(headers=auth, timeout=30) as lc:
                while not stop.is_set():
                    try:
                        resp = lc.get(f"{url}/id")
                    except httpx.HTTPError as exc:  # an answer cut off: in flight on it
                        failures.append(f"{victim['attempt_id']}: {exc!r}")
                        continue
                    if resp.status_code == 200:
                        answered += 1
                    else:
                        failures.append(resp.text)

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        net.agents[agent].kill9()

        def replaced() -> dict[str, Any] | None:
            now = _polled(net, "echo")
            ids = {x["attempt_id"] for x in now["replicas"] if x["ready"]}
            return now if now["ready"] == 2 and victim["attempt_id"] not in ids else None

        after = wait_for(replaced, 60, "a replacement replica to serve")
        stop.set()
        for w in workers:
            w.join(timeout=35)
        assert answered > 20
        # only a request in flight on the lost replica may fail, and it says so
        assert all(victim["attempt_id"] in f for f in failures), failures
        assert len(failures) <= 3, failures
        assert victim["node_id"] not in {x["node_id"] for x in after["replicas"]}
        seen = {c.get(f"{url}/id").text for _ in range(30)}
        assert seen == {x["attempt_id"] for x in after["replicas"]}

    metrics = httpx.get(f"{net.url}/metrics").text
    assert 'gpunet_service_requests_total{code="200",service="echo"}' in metrics
    assert 'gpunet_service_replicas{service="echo",state="ready"} 2.0' in metrics
    r = net.cli(net.user, "services", "stop", "echo")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not _polled(net, "echo")["replicas"], 30, "the replicas to stop")


@only_on("sqlite")  # the other on PostgreSQL
def test_load_scales_up_idleness_down_to_zero_and_back(net: Network, tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        "elastic",
        """
        service:
          replicas: {min: 0, max: 3}
          readiness: {path: /healthz, period_s: 0.5}
          scaling:
            target_inflight: 1
            stable_window_s: 6
            panic_window_s: 2
            scale_to_zero_after_s: 8
        """,
    )
    assert net.cli(net.user, "submit", str(spec)).returncode == 0
    assert _show(net, "elastic")["desired"] == 0
    url = f"{net.url}/services/elastic"
    auth = {"Authorization": f"Bearer {net.user}"}
    # a request at zero waits while the first replica starts, then is answered
    t0 = time.monotonic()
    first = httpx.get(f"{url}/id", headers=auth, timeout=60)
    assert first.status_code == 200, first.text
    cold = time.monotonic() - t0

    # six requests of 3 s in flight at once, again and again: more replicas are wanted
    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        with httpx.Client(headers=auth, timeout=60) as lc:
            while not stop.is_set():
                try:
                    r = lc.get(f"{url}/sleep?s=3")
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    try:
        up = wait_for(
            lambda: (lambda d: d if d["ready"] >= 2 else None)(_polled(net, "elastic")),
            60,
            "a second replica under load",
        )
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=65)
    assert any("panic" in x["reason"] or "stable" in x["reason"] for x in up["decisions"])
    # replicas taken away while answering are drained first: no request failed
    assert not errors, errors
    # idle: back to zero (min), each step with its reason
    down = wait_for(
        lambda: (lambda d: d if d["desired"] == 0 and not d["replicas"] else None)(
            _polled(net, "elastic")
        ),
        60,
        "scale to zero when idle",
    )
    assert "idle" in down["reason"], down["reason"]
    # and back from zero
    again = httpx.get(f"{url}/id", headers=auth, timeout=60)
    assert again.status_code == 200
    print(f"cold start through the gateway: {cold:.1f} s")
