"""What the agent's tunnel adds to a request: a no-op handler called directly (httpx to the
replica's port) and through the coordinator's TunnelHub and the agent's TunnelClient.

The setup is the tunnel's integration test's (tests/integration/tunnel_stack.py): the real
coordinator app behind uvicorn, the agent's TunnelClient over a real WebSocket, and a
Starlette replica, all on 127.0.0.1 and on ONE event loop, so the tunnel's figures include
the CPU both of its ends spend (the replica's too, as in the direct figures). Each run sends
``--requests`` requests sequentially, then the same count with ``--concurrency`` in flight,
for each path; runs alternate the paths' order. Reported: the medians over ``--runs`` runs
of p50 and p99 latency and of requests/s, and the tunnel's added p50.

    python benchmarks/tunnel.py --runs 3
    python benchmarks/tunnel.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.tunnel_stack import Stack, tunnel_stack  # noqa: E402

Call = Callable[[], Awaitable[None]]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(call: Call, requests: int, concurrency: int) -> dict[str, float]:
    """Latencies (ms) of ``requests`` calls with ``concurrency`` in flight, and requests/s."""
    latencies: list[float] = []
    per_worker = requests // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "rps": len(latencies) / elapsed,
    }


def calls(st: Stack) -> dict[str, Call]:
    direct_url = f"http://127.0.0.1:{st.replica.port}/noop"

    async def direct() -> None:
        r = await st.http.get(direct_url)
        assert r.content == b"ok"

    async def tunnel() -> None:
        res = await st.hub.request(st.node_id, "att-bench", "GET", "/noop")
        assert await res.read() == b"ok"

    return {"direct": direct, "tunnel": tunnel}


async def bench(runs: int, requests: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {}
    # idle connections kept open between phases: no reconnects measured, no stale ones
    async with tunnel_stack(replica_keep_alive_s=3600) as st:
        st.ports["att-bench"] = st.replica.port
        paths = calls(st)
        for call in paths.values():  # warm up both paths (connections, caches)
            await measure(call, 200, 1)
        for run in range(runs):
            order = list(paths) if run % 2 == 0 else list(reversed(paths))
            for name in order:
                for c in (1, concurrency):
                    key = f"{name} c={c}"
                    results.setdefault(key, []).append(await measure(paths[name], requests, c))
    med = {
        key: {m: statistics.median(r[m] for r in rs) for m in ("p50_ms", "p99_ms", "rps")}
        for key, rs in results.items()
    }
    return {"runs": results, "median": med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="1 run of 400 requests")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.requests = 1, 400
    out = asyncio.run(bench(args.runs, args.requests, args.concurrency))
    med = out["median"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    host = f"{platform.machine()} Python {platform.python_version()}"
    print(f"{host}, {date.today()}; medians of {args.runs} runs")
    print(f"{'path':<16} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for key, m in med.items():
        print(f"{key:<16} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} {m['rps']:8.0f}")
    for c in (1, args.concurrency):
        d, t = med[f"direct c={c}"], med[f"tunnel c={c}"]
        print(
            f"c={c}: the tunnel adds {t['p50_ms'] - d['p50_ms']:.3f} ms at p50; "
            f"throughput {t['rps'] / d['rps']:.2f}x of direct"
        )


if __name__ == "__main__":
    main()
