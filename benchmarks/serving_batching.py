"""What dynamic batching buys: the example model server (examples/service/server.py) with and
without batching, under closed-loop load at several concurrencies.

Modes: batching with each wait of ``--waits`` (milliseconds: how long a batch is collected;
0 batches only what queued while the model was busy), and no batching (``single``). Each run
starts a fresh server per mode on a free port on 127.0.0.1, warms it up, then for each
concurrency C keeps C requests in flight for ``--duration`` seconds (C httpx async clients,
each sending its next request as soon as the previous one is answered) and records every
request's latency. Reported per cell: requests/s, p50 and p99 latency, the server's mean
batch size (from its /stats), and the CPU used by the server, by the load generator (they
share the machine) and by everything else (the noise), and requests per server CPU-second.
``--endpoint completions`` sends 16-token completions instead of embeddings (one model call
per token). Medians over ``--runs`` runs.

    python benchmarks/serving_batching.py --runs 3 --json
    python benchmarks/serving_batching.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.procs import free_port, wait_for  # noqa: E402

SERVER = ROOT / "examples" / "service" / "server.py"
TICK = os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Server:
    def __init__(self, max_wait_ms: float | None, log: Path) -> None:
        """A server batching with ``max_wait_ms``, or without batching (None)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flags = ["--no-batching"] if max_wait_ms is None else ["--max-wait-ms", f"{max_wait_ms:g}"]
        self._log = log.open("wb")
        # one BLAS thread: the model runs on one compute unit in every mode, and the load
        # generator keeps the other core
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.p = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(self.port), *flags],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200,
            60,
            "the example server",
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


def request_body(endpoint: str, i: int) -> tuple[str, dict[str, Any]]:
    text = f"request {i}: a sentence of a dozen words about gpus and the models they serve"
    if endpoint == "completions":
        return "/v1/completions", {"prompt": text, "max_tokens": 16}
    return "/v1/embeddings", {"input": text}


async def load(
    url: str, endpoint: str, concurrency: int, duration: float
) -> tuple[list[float], float]:
    """Closed loop: ``concurrency`` clients, each with one request in flight at a time,
    starting requests for ``duration`` seconds; the latencies of all the requests started,
    and the time until the last one was answered."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        start = time.perf_counter()
        end = start + duration

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                path, body = request_body(endpoint, i)
                t0 = time.perf_counter()
                r = await c.post(path, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
                i += concurrency

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return latencies, time.perf_counter() - start


def cell(s: Server, endpoint: str, concurrency: int, duration: float) -> dict[str, float]:
    before, srv0, me0, all0 = s.stats(), cpu_s(s.p.pid), own_cpu_s(), busy_s()
    lat, elapsed = asyncio.run(load(s.url, endpoint, concurrency, duration))
    after, srv1, me1, all1 = s.stats(), cpu_s(s.p.pid), own_cpu_s(), busy_s()
    calls = after["calls"] - before["calls"]
    batches = after["batches"] - before["batches"]
    return {
        "requests_per_s": len(lat) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": pct(lat, 0.99) * 1000,
        "mean_batch": calls / batches if batches else 0.0,
        "server_cpu_pct": 100 * (srv1 - srv0) / elapsed,
        "client_cpu_pct": 100 * (me1 - me0) / elapsed,
        # requests per CPU-second of the server: what batching saves, whatever share of the
        # machine the server got
        "requests_per_server_cpu_s": len(lat) / max(srv1 - srv0, 1e-9),
        # everything else on the machine (other processes): the noise of the figures
        "other_cpu_pct": 100 * ((all1 - all0) - (srv1 - srv0) - (me1 - me0)) / elapsed,
    }


def modes(args: argparse.Namespace) -> dict[str, float | None]:
    """The servers to compare: one per batching wait, and one without batching."""
    out: dict[str, float | None] = {f"batched-{w:g}ms": w for w in args.waits}
    out["single"] = None
    return out


def busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / TICK  # all but idle and iowait


def one_run(args: argparse.Namespace, concurrencies: list[int], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, wait in modes(args).items():
        s = Server(wait, tmp / f"{mode}.log")
        try:
            asyncio.run(load(s.url, args.endpoint, 4, args.warmup))
            out[mode] = {str(c): cell(s, args.endpoint, c, args.duration) for c in concurrencies}
        finally:
            s.stop()
    return out


MODEL_COST = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from server import TinyModel
m = TinyModel()
x = np.stack([m.features_of(f"request {i} about gpus") for i in range(32)])
out = {}
for b in (1, 8, 32):
    m.project(x[:b])
    n = max(4, 256 // b)
    t = time.process_time()
    for _ in range(n):
        m.project(x[:b])
    out[b] = (time.process_time() - t) / n / b * 1000
print(json.dumps(out))
"""


def model_cost() -> dict[str, float]:
    """CPU milliseconds per model call at batch 1, 8 and 32, the model alone (no HTTP): what
    batching saves in the model, apart from the server's other costs and the load."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", MODEL_COST, str(SERVER.parent)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return {k: round(v, 3) for k, v in json.loads(r.stdout).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--endpoint", choices=("embeddings", "completions"), default="embeddings")
    ap.add_argument(
        "--waits", default="2,0", help="batching waits to compare (ms, comma-separated)"
    )
    ap.add_argument("--quick", action="store_true", help="one run of 3 s per cell")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 3.0, 1.0
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    args.waits = [float(x) for x in args.waits.split(",")]
    with tempfile.TemporaryDirectory(prefix="gpunet-serving-") as d:
        runs = [one_run(args, concurrencies, Path(d)) for _ in range(args.runs)]
    medians: dict[str, Any] = {}
    for mode in modes(args):
        medians[mode] = {
            str(c): {
                k: round(statistics.median(r[mode][str(c)][k] for r in runs), 2)
                for k in runs[0][mode][str(c)]
            }
            for c in concurrencies
        }
    ratios = {
        mode: {
            str(c): round(
                medians[mode][str(c)]["requests_per_s"]
                / medians["single"][str(c)]["requests_per_s"],
                2,
            )
            for c in concurrencies
        }
        for mode in modes(args)
        if mode != "single"
    }
    result = {
        "date": date.today().isoformat(),
        "machine": {
            "cores": os.cpu_count(),
            "arch": platform.machine(),
            "python": platform.python_version(),
        },
        "endpoint": args.endpoint,
        "duration_s": args.duration,
        "runs": args.runs,
        "medians": medians,
        "throughput_over_single": ratios,
        "model_cpu_ms_per_call_by_batch": model_cost(),
        "per_run": runs,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.endpoint}, medians of {args.runs} run(s), {args.duration:g} s per cell")
    print(
        f"{'mode':12} {'C':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} "
        f"{'server':>7} {'client':>7} {'other':>7} {'req/cpu-s':>9}"
    )
    for mode in modes(args):
        for c in concurrencies:
            m = medians[mode][str(c)]
            print(
                f"{mode:12} {c:>3} {m['requests_per_s']:>8.1f} {m['p50_ms']:>8.1f} "
                f"{m['p99_ms']:>8.1f} {m['mean_batch']:>6.1f} {m['server_cpu_pct']:>6.0f}% "
                f"{m['client_cpu_pct']:>6.0f}% {m['other_cpu_pct']:>6.0f}% "
                f"{m['requests_per_server_cpu_s']:>9.0f}"
            )
    print("throughput over single:", ratios)
    print("model alone, CPU ms per call by batch size:", result["model_cpu_ms_per_call_by_batch"])


if __name__ == "__main__":
    main()
