"""The example server's batcher (examples/service/server.py), in process: no sockets."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[3] / "examples" / "service" / "server.py"


@pytest.fixture(scope="module")
def server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_service_server", PATH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_calls_waiting_together_run_as_one_batch(server: ModuleType) -> None:
    model = server.TinyModel(features=256, dim=32)
    texts = [f"text number {i}" for i in range(10)]

    async def run(max_batch: int) -> tuple[list[np.ndarray], dict[str, object]]:
        b = server.Batcher(model, max_batch=max_batch, max_wait_ms=50)
        b.start()
        rows = await asyncio.gather(*(b(model.features_of(t)) for t in texts))
        await b.stop()
        return rows, b.stats()

    rows, stats = asyncio.run(run(4))
    # 10 calls queued at once, at most 4 a batch: 4 + 4 + 2
    assert stats["sizes"] == {"2": 1, "4": 2}
    assert (stats["batches"], stats["calls"], stats["largest_batch"]) == (3, 10, 4)
    alone, stats1 = asyncio.run(run(1))
    assert stats1["sizes"] == {"1": 10}
    # each caller gets its own row, the same as computed alone, bit for bit
    for t, row, single in zip(texts, rows, alone, strict=True):
        expect = model.project(model.features_of(t)[None, :])[0]
        assert np.array_equal(row, expect) and np.array_equal(single, expect)


def test_a_model_error_reaches_every_caller_of_the_batch(server: ModuleType) -> None:
    model = server.TinyModel(features=64, dim=8)

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of memory")

    model.project = broken

    async def run() -> list[object]:
        b = server.Batcher(model, max_batch=8, max_wait_ms=20)
        b.start()
        out = await asyncio.gather(
            *(b(np.zeros(64, np.float32)) for _ in range(3)), return_exceptions=True
        )
        await b.stop()
        return out

    out = asyncio.run(run())
    assert all(isinstance(e, RuntimeError) and str(e) == "out of memory" for e in out)


def test_the_model_is_the_same_for_the_same_seed(server: ModuleType) -> None:
    a, b = server.TinyModel(features=128, dim=16), server.TinyModel(features=128, dim=16)
    assert np.array_equal(a.weights, b.weights) and a.vocab == b.vocab
    assert set(np.unique(a.weights)) <= {-1.0, 0.0, 1.0}
    x = a.features_of("The cat sat on the mat")
    assert x.sum() == 6 + 5  # six words, five word pairs
