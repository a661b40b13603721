"""Gateway benchmark: what the coordinator's gateway adds to a request, how many requests a
second one coordinator forwards, and how fast a service scales up under a load step.

A real coordinator (``gpunet server``, SQLite in a temporary directory) and one real agent
with a simulated GPU on 127.0.0.1 (isolation: whatever the agent detects). The service is a
no-op ASGI handler under uvicorn (2 bytes, no work), so the gateway's path is what is
measured: client → coordinator (auth, routing, balancer) → the agent's tunnel (one WebSocket
the agent dialled out) → the agent → the replica's port, and back.

* latency: sequential requests on one keep-alive connection, directly to the replica's port
  and through ``/services/NAME/``, in alternated blocks of ``--block``, ``--rounds`` rounds;
  p50 and p99 of each, and the p50 added by the gateway.
* throughput: ``--concurrency`` clients for ``--seconds`` s on each path, alternated; requests
  per second (the load generator shares the machine with the coordinator and the agent).
* scale-up: a service with ``target_inflight: 1`` at 1 ready replica gets a step of
  ``--step`` concurrent slow requests; time from the step to the second replica answering
  through the gateway (its first request), ``--trials`` times, p50.

    python benchmarks/gateway.py --json
    python benchmarks/gateway.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import Network, wait_for  # noqa: E402

NOOP = textwrap.dedent("""
    import asyncio, os
    from urllib.parse import parse_qs
    import uvicorn

    ME = os.environ.get("GPUNET_ATTEMPT_ID", "?").encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/sleep":
            q = parse_qs(scope["query_string"].decode())
            await asyncio.sleep(float(q.get("s", ["1"])[0]))
        body = ME if scope["path"] in ("/id", "/sleep") else b"ok"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    print("listening on", os.environ["PORT"], flush=True)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning",
                access_log=False)
""")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _deploy(n: Network, root: Path, name: str, service: str) -> None:
    work = root / name
    work.mkdir()
    (work / "noop.py").write_text(NOOP)
    spec = work / "service.yaml"
    spec.write_text(f'name: {name}\ncommand: ["python3", "noop.py"]\n' + textwrap.dedent(service))
    r = n.cli(n.user, "submit", str(spec))
    assert r.returncode == 0, r.stderr


def _show(n: Network, name: str) -> dict[str, Any]:
    return dict(n.cli_json(n.user, "services", "show", name))


def _ready(n: Network, name: str, count: int, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (lambda d: d if d["ready"] == count else None)(_show(n, name)),
        timeout,
        f"{count} ready replica(s) of {name}",
    )


def _replica_port(n: Network, job_id: str) -> int:
    def port() -> int | None:
        out = n.cli(n.user, "logs", job_id).stdout
        m = re.search(r"listening on (\d+)", out)
        return int(m.group(1)) if m else None

    return wait_for(port, 30, "the replica's port in its log")


def latency(direct: str, gateway: str, token: str, rounds: int, block: int) -> dict[str, Any]:
    res: dict[str, list[float]] = {"direct": [], "gateway": []}
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=30) as cd, httpx.Client(timeout=30, headers=auth) as cg:
        for c, url in ((cd, direct), (cg, gateway)):  # warm both connections
            for _ in range(50):
                c.get(url).raise_for_status()
        for r in range(rounds):
            order = [("direct", cd, direct), ("gateway", cg, gateway)]
            for what, c, url in order if r % 2 == 0 else order[::-1]:
                for _ in range(block):
                    t = time.perf_counter()
                    resp = c.get(url)
                    res[what].append(time.perf_counter() - t)
                    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = {
        k: {"n": len(v), "p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3}
        for k, v in res.items()
    }
    out["added_p50_ms"] = out["gateway"]["p50_ms"] - out["direct"]["p50_ms"]
    out["added_p99_ms"] = out["gateway"]["p99_ms"] - out["direct"]["p99_ms"]
    return out


async def _rate(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    done = 0
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, headers=headers, limits=limits) as c:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                r = await c.get(url)
                assert r.status_code == 200, r.text
                done += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t)


def throughput(
    direct: str, gateway: str, token: str, concurrency: int, seconds: float, rounds: int
) -> dict[str, Any]:
    res: dict[str, list[float]] = {"direct": [], "gateway": []}
    auth = {"Authorization": f"Bearer {token}"}
    for r in range(rounds):
        order = [("direct", direct, {}), ("gateway", gateway, auth)]
        for what, url, headers in order if r % 2 == 0 else order[::-1]:
            res[what].append(asyncio.run(_rate(url, headers, concurrency, seconds)))
    return {
        k: {"runs": [round(x, 1) for x in v], "median_rps": statistics.median(v)}
        for k, v in res.items()
    }


def _load(
    url: str,
    auth: dict[str, str],
    old: set[str],
    stop: threading.Event,
    seen_new: threading.Event,
) -> None:
    """Slow requests one after another until ``stop``; ``seen_new`` once a replica not in
    ``old`` answered one."""
    with httpx.Client(timeout=60, headers=auth) as c:
        while not stop.is_set():
            r = c.get(url)
            if r.status_code == 200 and r.text not in old:
                seen_new.set()


def scale_up(n: Network, url: str, step: int, trials: int) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {n.user}"}
    times: list[float] = []
    for _ in range(trials):
        first = _ready(n, "react", 1, timeout=120)
        wait_for(lambda: _show(n, "react")["desired"] == 1, 120, "the service back at 1")
        old = {x["attempt_id"] for x in first["replicas"]}
        stop = threading.Event()
        seen_new = threading.Event()

        workers = [
            threading.Thread(target=_load, args=(f"{url}/sleep?s=1", auth, old, stop, seen_new))
            for _ in range(step)
        ]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        ok = seen_new.wait(timeout=120)
        elapsed = time.monotonic() - t0
        stop.set()
        for w in workers:
            w.join(timeout=65)
        assert ok, "no new replica answered within 120 s"
        times.append(elapsed)
    return {"trials_s": [round(x, 2) for x in times], "p50_s": statistics.median(times)}


def network(root: Path) -> Network:
    """A network (not started yet) whose files and SQLite database live in ``root``."""
    return Network(root, f"sqlite:///{root / 'gpunet.db'}", lease_timeout=10.0)


def noop_service(n: Network, root: Path) -> tuple[str, str]:
    """Start ``n``'s coordinator and one agent and deploy the no-op service ``noop``: the
    replica's direct URL and the gateway's URL for it."""
    n.start_coordinator()
    n.owner = n.token("provider", "owner")
    n.start_agent("a1", "4xA100-80GB", n.owner, extra=["--accept-unisolated-jobs"])
    n.user = n.token("consumer", "alice")
    n.wait_online(1)
    _deploy(n, root, "noop", "service: {replicas: {min: 1, max: 1}}\n")
    d = _ready(n, "noop", 1)
    port = _replica_port(n, d["replicas"][0]["job_id"])
    return f"http://127.0.0.1:{port}/", f"{n.url}/services/noop/"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate-rounds", type=int, default=4)
    ap.add_argument("--step", type=int, default=4)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.block, a.seconds, a.rate_rounds, a.trials = 2, 50, 1.0, 2, 1
    with tempfile.TemporaryDirectory(prefix="gpunet-gw-") as tmp:
        root = Path(tmp)
        n = network(root)
        try:
            direct, gateway = noop_service(n, root)
            result: dict[str, Any] = {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                f"Python {platform.python_version()}",
                "latency": latency(direct, gateway, n.user, a.rounds, a.block),
                "throughput": throughput(
                    direct, gateway, n.user, a.concurrency, a.seconds, a.rate_rounds
                ),
            }
            n.cli(n.user, "services", "stop", "noop")
            _deploy(
                n,
                root,
                "react",
                """
                service:
                  replicas: {min: 1, max: 4}
                  readiness: {path: /, period_s: 0.5}
                  scaling: {target_inflight: 1, stable_window_s: 10, panic_window_s: 2}
                """,
            )
            result["scale_up"] = scale_up(n, f"{n.url}/services/react", a.step, a.trials)
        finally:
            n.close()
    if a.json:
        print(json.dumps(result, indent=2))
        return
    lat, thr, up = result["latency"], result["throughput"], result["scale_up"]
    print(f"machine: {result['machine']}")
    for k in ("direct", "gateway"):
        print(
            f"{k:8} p50 {lat[k]['p50_ms']:.2f} ms  p99 {lat[k]['p99_ms']:.2f} ms  (n={lat[k]['n']})"
        )
    print(
        f"added by the gateway: p50 {lat['added_p50_ms']:.2f} ms, p99 {lat['added_p99_ms']:.2f} ms"
    )
    for k in ("direct", "gateway"):
        print(f"{k:8} {thr[k]['median_rps']:.0f} requests/s (runs {thr[k]['runs']})")
    print(f"scale-up reaction p50 {up['p50_s']:.2f} s (trials {up['trials_s']})")


if __name__ == "__main__":
    main()
