"""Runs one attempt: its own working directory, its own process group, exactly its GPUs."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpunet.archive import Limits, extract

LogSink = Callable[[str, str], None]  # (stream, text)

_PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:
    """In the child: if the agent dies (even by kill -9), the job's leader dies too."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def job_env(
    spec: dict[str, Any], gpu_indices: list[int], attempt: dict[str, Any]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices)
    env["GPUNET_JOB_ID"] = attempt["job_id"]
    env["GPUNET_ATTEMPT_ID"] = attempt["attempt_id"]
    env["GPUNET_ATTEMPT_NUMBER"] = str(attempt["number"])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def unpack(archive: bytes, dest: Path, limits: Limits | None = None) -> None:
    """Extract a tar.gz working directory, checked again here whatever the coordinator said:
    nothing may land outside ``dest``, and bombs stop at the limits."""
    extract(archive, dest, limits or Limits())


def argv_of(spec: dict[str, Any]) -> list[str]:
    cmd = spec["command"]
    return ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]


class Run:
    """A started attempt."""

    def __init__(self, proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> None:
        self.proc = proc
        self.pumps = pumps
        self.stop_reason: str | None = None

    async def wait(self) -> int:
        code = await self.proc.wait()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        return code

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, reason: str, grace_s: float = 5.0) -> None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after the grace."""
        self.stop_reason = reason
        self.signal_group(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
        # children that ignored SIGTERM or outlived the leader
        self.signal_group(signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, name: str, sink: LogSink) -> None:
    # lossless: bytes that are not UTF-8 arrive as \\xNN, not as replacement marks; the
    # incremental decoder keeps a character split across two reads whole
    decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
    while True:
        chunk = await stream.read(65536)
        text = decoder.decode(chunk, final=not chunk)
        if text:
            sink(name, text)
        if not chunk:
            return


async def start(
    spec: dict[str, Any],
    workdir: Path,
    gpu_indices: list[int],
    attempt: dict[str, Any],
    sink: LogSink,
) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *argv_of(spec),
        cwd=workdir,
        env=job_env(spec, gpu_indices, attempt),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: cancel kills all of it
        preexec_fn=_die_with_agent if sys.platform.startswith("linux") else None,
    )
    assert proc.stdout and proc.stderr
    pumps = [
        asyncio.create_task(_pump(proc.stdout, "stdout", sink)),
        asyncio.create_task(_pump(proc.stderr, "stderr", sink)),
    ]
    return Run(proc, pumps)
