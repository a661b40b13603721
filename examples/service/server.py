"""A small model server for a gpunet service, with dynamic batching.

The model is generated, never downloaded: a fixed random projection (seeded) of hashed word
features, 16,384 inputs to 1,024 outputs (64 MiB of weights, more than a CPU cache holds,
as with real models), used two ways:

* ``POST /v1/embeddings``: the projection of a text, scaled to unit length;
* ``POST /v1/completions``: greedy generation over a made-up vocabulary (one word per output
  dimension; the next word is the largest dimension of the last words' projection, skipping
  words among the last four). Its text
  means nothing; it has the shape and the cost profile of a real one: one model call per
  generated token, streamed as Server-Sent Events with ``"stream": true``.

Both are OpenAI-shaped. ``GET /healthz`` answers once the model is loaded (the readiness
path), ``GET /v1/models`` lists the model, ``GET /stats`` counts the batches run.

**Dynamic batching**: every model call (one text, or one token of a generation) is queued;
one worker takes the first waiting call, collects more for up to ``--max-wait-ms`` or until
``--max-batch`` calls are waiting, and runs them together as one matrix multiply, which
reads the weights once for the whole batch instead of once per call. ``--no-batching`` runs
every call alone. The answers are the same either way, bit for bit: the features are word
counts and the weights are -1, 0 or +1, so every sum is an integer that float32 holds
exactly, whatever order the matrix multiply adds in.

    python examples/service/server.py            # listens on $PORT, default 8000
    python examples/service/server.py --no-batching --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

MODEL = "gpunet-tiny-projection"
WORD = re.compile(r"\w+")
CONTEXT_WORDS = 8  # a generated word depends on the last this many words


class TinyModel:
    """``features``-wide hashed word counts times a ``features x dim`` ternary matrix."""

    def __init__(self, features: int = 16384, dim: int = 1024, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.features = features
        self.dim = dim
        # a sparse random projection (Achlioptas): -1, 0, +1 with probabilities 1/6, 2/3, 1/6
        self.weights = rng.choice(
            np.array([-1, 0, 1], dtype=np.float32), size=(features, dim), p=[1 / 6, 2 / 3, 1 / 6]
        )
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        picks = rng.integers(0, len(syllables), size=(dim, 3))
        self.vocab = ["".join(syllables[i] for i in row) for row in picks]

    def features_of(self, text: str) -> np.ndarray:
        """Counts of the text's words and word pairs, hashed into ``features`` buckets."""
        words = WORD.findall(text.lower())
        x = np.zeros(self.features, dtype=np.float32)
        for tok in [*words, *(a + " " + b for a, b in zip(words, words[1:], strict=False))]:
            x[zlib.crc32(tok.encode()) % self.features] += 1
        return x

    def project(self, batch: np.ndarray) -> np.ndarray:
        """One matrix multiply for the whole batch (rows: feature vectors)."""
        return batch @ self.weights


class Batcher:
    """Collects model calls and runs them in batches on one worker thread."""

    def __init__(self, model: TinyModel, max_batch: int, max_wait_ms: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        # one thread: the model runs one batch at a time, like one accelerator would
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.sizes: Counter[int] = Counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((x, fut))
        return await fut

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        items = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch:
            try:
                items.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [(x, f) for x, f in items if not f.cancelled()]  # clients that left
            if not live:
                continue
            batch = np.stack([x for x, _ in live])
            try:
                out = await loop.run_in_executor(self.pool, self.model.project, batch)
            except Exception as exc:  # noqa: BLE001 - every caller gets the model's error
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.sizes[len(live)] += 1
            for (_, f), row in zip(live, out, strict=True):
                if not f.done():
                    f.set_result(row)

    def stats(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        calls = sum(n * c for n, c in self.sizes.items())
        return {
            "batching": self.max_batch > 1,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000,
            "batches": batches,
            "calls": calls,
            "mean_batch": calls / batches if batches else 0.0,
            "largest_batch": max(self.sizes, default=0),
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class EmbeddingRequest(BaseModel):
    input: str | list[str] = Field(min_length=1)
    model: str | None = None


class CompletionRequest(BaseModel):
    prompt: str
    model: str | None = None
    max_tokens: int = Field(default=16, ge=1, le=256)
    stream: bool = False


def error(status: int, message: str, code: str) -> JSONResponse:
    """An OpenAI-shaped error."""
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}, status
    )


def create_app(
    batching: bool = True,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    features: int = 16384,
    dim: int = 1024,
) -> FastAPI:
    state: dict[str, Any] = {}

    async def load() -> None:
        # off the event loop: the server answers (503 on /healthz) while the model loads,
        # as a real one does for the seconds or minutes its weights take
        model = await asyncio.to_thread(TinyModel, features, dim)
        batcher = Batcher(model, max_batch if batching else 1, max_wait_ms if batching else 0)
        batcher.start()
        state.update(model=model, batcher=batcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(load())
        yield
        loading.cancel()
        if "batcher" in state:
            await state["batcher"].stop()

    app = FastAPI(title="gpunet example model server", lifespan=lifespan)

    def unknown(name: str | None) -> JSONResponse | None:
        """An error for a model name this server does not serve, or while it loads."""
        if "batcher" not in state:
            return error(503, "The model is loading", "model_loading")
        if name is not None and name != MODEL:
            return error(404, f"The model {name!r} does not exist", "model_not_found")
        return None

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if "batcher" not in state:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return dict(state["batcher"].stats()) if "batcher" in state else {"loading": True}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "gpunet"}],
        }

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> JSONResponse:
        if bad := unknown(req.model):
            return bad
        model: TinyModel = state["model"]
        texts = [req.input] if isinstance(req.input, str) else req.input
        rows = await asyncio.gather(*(state["batcher"](model.features_of(t)) for t in texts))
        data = []
        for i, row in enumerate(rows):
            v = row.astype(np.float64)
            norm = float(np.sqrt(v @ v))
            data.append(
                {"object": "embedding", "index": i, "embedding": (v / norm if norm else v).tolist()}
            )
        tokens = sum(len(WORD.findall(t)) for t in texts)
        # a JSONResponse is serialized by json.dumps alone (no per-float encoder pass)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": MODEL,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def generate(prompt: str, max_tokens: int) -> AsyncIterator[str]:
        model: TinyModel = state["model"]
        words = WORD.findall(prompt.lower())
        for _ in range(max_tokens):
            row = await state["batcher"](model.features_of(" ".join(words[-CONTEXT_WORDS:])))
            # the largest dimension whose word is not among the last few (a stable sort:
            # ties go to the first, on every path)
            recent = set(words[-4:])
            order = np.argsort(-row, kind="stable")
            word = next((model.vocab[i] for i in order if model.vocab[i] not in recent), "")
            words.append(word)
            yield " " + word

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        if bad := unknown(req.model):
            return bad
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        prompt_tokens = len(WORD.findall(req.prompt))

        def body(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": MODEL,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            }

        if req.stream:

            async def events() -> AsyncIterator[str]:
                async for piece in generate(req.prompt, req.max_tokens):
                    yield f"data: {json.dumps(body(piece, None))}\n\n"
                yield f"data: {json.dumps(body('', 'length'))}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(
                events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        text = "".join([p async for p in generate(req.prompt, req.max_tokens)])
        out = body(text, "length")
        out["usage"] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": req.max_tokens,
            "total_tokens": prompt_tokens + req.max_tokens,
        }
        return JSONResponse(out)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    ap.add_argument("--no-batching", action="store_true", help="run every model call alone")
    ap.add_argument("--max-batch", type=int, default=32, help="calls in one batch at most")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="collect a batch this long")
    ap.add_argument("--features", type=int, default=16384, help="the model's input width")
    ap.add_argument("--dim", type=int, default=1024, help="the model's output width")
    a = ap.parse_args()
    app = create_app(not a.no_batching, a.max_batch, a.max_wait_ms, a.features, a.dim)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
