"""Start cost of isolation: time from the agent handing an attempt to ``runner.start`` to the
job's first line of output, for a bare process, the namespace sandbox and a container.

    python benchmarks/sandbox_start.py --runs 100 [--json]

Every mode runs the same command (``/bin/sh -c 'echo ready'``), interleaved run by run so
that the machine's noise falls on all of them alike. The sandbox needs root, bubblewrap and
writable cgroups; containers need a working podman or docker and the test image, which is
built here from a static busybox (run from a checkout: it uses tests/container_image.py).
A mode that cannot run here is reported with the reason and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.agent import runner  # noqa: E402
from gpunet.agent.sandbox import Limits, Sandbox, SandboxConfig, image_jobs, probe  # noqa: E402
from gpunet.agent.sandbox.image_jobs import ContainerHost  # noqa: E402

COMMAND = "echo ready"


async def first_line_s(
    sandbox: Sandbox | None, containers: ContainerHost | None, image: str | None, work: Path, n: int
) -> float:
    got = asyncio.Event()
    spec: dict[str, Any] = {"command": COMMAND}
    if image:
        spec["image"] = image
    attempt = {"job_id": "bench", "attempt_id": f"bench-{n}", "number": 1}
    t0 = time.perf_counter()
    run = await runner.start(
        spec, work / f"bench-{n}", [], attempt, lambda s, d: got.set(), sandbox, containers
    )
    await got.wait()
    dt = time.perf_counter() - t0
    await run.wait()
    run.close()
    return dt


def summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": p99, "max_ms": ms[-1]}


async def main(runs: int, as_json: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="gpunet-bench-") as tmp:
        home = Path(tmp)
        iso = probe(home, SandboxConfig())
        modes: dict[str, tuple[Sandbox | None, ContainerHost | None, str | None]] = {
            "bare": (None, None, None)
        }
        skipped: dict[str, str] = {}
        if iso.sandbox is not None:
            modes["sandbox"] = (iso.sandbox, None, None)
        else:
            skipped["sandbox"] = iso.line()
        host, line = image_jobs.find(home, Limits(pids=4096), network="none")
        if host is None:
            skipped["container"] = line
        else:
            try:
                from tests.container_image import IMAGE, podman_with_test_image

                podman_with_test_image()
                modes["container"] = (None, host, IMAGE)
            except BaseException as exc:  # pytest's skip is a BaseException
                skipped["container"] = f"no test image: {exc}"
        times: dict[str, list[float]] = {m: [] for m in modes}
        for i in range(runs):
            for name, (sb, ch, image) in modes.items():
                times[name].append(await first_line_s(sb, ch, image, home, i))
            if not as_json and sys.stderr.isatty():
                print(f"\r{i + 1}/{runs}", end="", file=sys.stderr)
        result = {
            "command": COMMAND,
            "modes": {m: summary(t) for m, t in times.items()},
            "skipped": skipped,
            "sandbox": iso.line(),
            "containers": line,
        }
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            print(file=sys.stderr)
            for m, s in result["modes"].items():
                print(
                    f"{m:9s} p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  "
                    f"max {s['max_ms']:7.1f} ms  (n={s['n']})"
                )
            for m, why in skipped.items():
                print(f"{m:9s} skipped: {why}")
        if iso.sandbox is not None:
            iso.sandbox.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=100, help="attempts per mode")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.json))
