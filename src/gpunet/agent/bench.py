"""Benchmarks the agent runs on idle GPUs: at start (burn-in) and periodically.

Simulated GPUs get results derived from the spec table (marked simulated; a fault profile's
``benchmark_pct`` and ``soak_errors`` make one slow or flaky). Real GPUs are measured with
PyTorch when it is installed (the ``gpu`` extra); without it the result says what could not
be measured and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from gpunet.core.benchmark import METRICS, BenchmarkResult, simulated_result
from gpunet.wire.agent import MAX_REASON_CHARS, BenchmarkReport, BenchmarkRun

if TYPE_CHECKING:
    from gpunet.agent.loop import Agent

log = logging.getLogger("gpunet.agent")


def simulated(backend: Any, index: int, model: str) -> BenchmarkResult:
    faults = backend.faults.faults(index)
    r = simulated_result(index, model, float(faults.get("benchmark_pct", 100.0)) / 100.0)
    errors = int(faults.get("soak_errors", 0))
    if errors:
        r = BenchmarkResult(r.index, r.values, r.unmeasured, r.soak_runs, errors, True)
    return r


def measured(index: int) -> BenchmarkResult:
    """Measure GPU ``index`` with PyTorch, or say why it could not."""
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        why = "PyTorch is not installed (pip install 'gpunet[gpu]')"
        return BenchmarkResult(index, {}, {m: why for m in METRICS})
    if not torch.cuda.is_available():
        why = "PyTorch sees no CUDA device"
        return BenchmarkResult(index, {}, {m: why for m in METRICS})
    return _torch_bench(torch, index)  # pragma: no cover - needs a GPU


def _timed(torch: Any, fn: Any, reps: int) -> float:  # pragma: no cover - needs a GPU
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def _torch_bench(torch: Any, index: int) -> BenchmarkResult:  # pragma: no cover - needs a GPU
    dev = torch.device(f"cuda:{index}")
    values: dict[str, float] = {}
    unmeasured: dict[str, str] = {}
    n = 8192
    for key, dtype in (
        ("bf16_tflops", torch.bfloat16),
        ("fp16_tflops", torch.float16),
        ("fp32_tflops", torch.float32),
    ):
        try:
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            secs = _timed(torch, lambda a=a, b=b: a @ b, 20)
            values[key] = round(2 * n**3 / secs / 1e12, 2)
        except RuntimeError as exc:
            unmeasured[key] = f"{dtype} matmul failed: {exc}"
    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    secs = _timed(torch, lambda: dst.copy_(src), 20)
    values["memory_bandwidth_gbps"] = round(2 * size / secs / 1e9, 1)  # read + write
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    secs = _timed(torch, lambda: src.copy_(host, non_blocking=True), 10)
    values["h2d_gbps"] = round(size / secs / 1e9, 1)
    # soak: the same product, repeated, must give the same bits
    torch.manual_seed(0)
    a = torch.randn(4096, 4096, device=dev)
    first = (a @ a).sum().item()
    runs, errors = 10, 0
    for _ in range(runs):
        try:
            if (a @ a).sum().item() != first:
                errors += 1
        except RuntimeError:
            errors += 1
    return BenchmarkResult(index, values, unmeasured, runs, errors, False)


def run_one(backend: Any, index: int, model: str | None) -> BenchmarkResult:
    if backend.simulated and model:
        return simulated(backend, index, model)
    return measured(index)


def to_wire(r: BenchmarkResult) -> BenchmarkRun:
    """A result as the agent reports it (over-long reasons cut to the protocol's bound)."""
    return BenchmarkRun(
        index=r.index,
        values=dict(r.values),
        unmeasured={k: v[:MAX_REASON_CHARS] for k, v in r.unmeasured.items()},
        soak_runs=r.soak_runs,
        soak_errors=r.soak_errors,
        simulated=r.simulated,
    )


async def benchmark_loop(agent: Agent) -> None:
    """Burn-in at start, then every ``agent.benchmark_every_s`` on the GPUs that are idle."""
    models = {g.index: g.model for g in agent.backend.discover()}
    kind = "burn_in"
    while True:
        # a GPU its owner is using is theirs: no benchmark disturbs them
        owned = agent.owner.busy_indices() if agent.owner is not None else set()
        idle = [i for i in models if i not in agent._busy_indices() and i not in owned]
        results = []
        for i in idle:
            r = await asyncio.to_thread(run_one, agent.backend, i, models[i])
            results.append(to_wire(r))
        if results:
            try:
                report = BenchmarkReport(kind=kind, results=results)
                await agent._call(
                    "POST", "/v1/agent/benchmarks", json=report.model_dump(mode="json")
                )
                kind = "periodic"
            except Exception as exc:  # the next round tries again
                if not isinstance(exc, httpx.TransportError):
                    log.warning("benchmark report failed: %s", exc)
        await asyncio.sleep(agent.benchmark_every_s)
