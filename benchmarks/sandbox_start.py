"""Time from ``runner.start`` to the job's first output line, bare vs sandboxed.

    python benchmarks/sandbox_start.py --runs 20

Sandboxed runs need root, bubblewrap and writable cgroups (else only bare is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gpunet.agent import runner
from gpunet.agent.sandbox import Sandbox, SandboxConfig, probe


async def first_line_s(sandbox: Sandbox | None, work: Path, n: int) -> float:
    got = asyncio.Event()
    spec = {"command": ["python3", "-c", "print('ready', flush=True)"]}
    attempt = {"job_id": "bench", "attempt_id": f"bench-{n}", "number": 1}
    workdir = work / f"bench-{n}"
    t0 = time.perf_counter()
    run = await runner.start(spec, workdir, [], attempt, lambda s, d: got.set(), sandbox)
    await got.wait()
    dt = time.perf_counter() - t0
    await run.wait()
    run.close()
    return dt


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gpunet-bench-") as tmp:
        home = Path(tmp)
        iso = probe(home, SandboxConfig())
        modes: list[tuple[str, Sandbox | None]] = [("bare", None)]
        if iso.sandbox is not None:
            modes.append(("sandbox", iso.sandbox))
        else:
            print(iso.line())
        for name, sb in modes:
            times = [await first_line_s(sb, home, i) for i in range(runs)]
            print(
                f"{name:8s} median {statistics.median(times) * 1000:6.1f} ms  "
                f"min {min(times) * 1000:6.1f}  max {max(times) * 1000:6.1f}  (n={runs})"
            )
        if iso.sandbox is not None:
            iso.sandbox.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    asyncio.run(main(ap.parse_args().runs))
