"""Runs one attempt: its own working directory, environment built from scratch, exactly its
GPUs; sandboxed (bubblewrap, its own uid and cgroup) when the agent has a sandbox, else a bare
process group."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpunet.agent.sandbox import bwrap
from gpunet.agent.sandbox.container import NOBODY, prepare_workdir
from gpunet.agent.sandbox.env import job_env
from gpunet.agent.sandbox.image_jobs import ContainerHost
from gpunet.agent.sandbox.launch import AttemptBox, Sandbox, die_with_agent
from gpunet.archive import Limits, extract

LogSink = Callable[[str, str], None]  # (stream, text)

__all__ = ["Run", "argv_of", "job_env", "reap_bare_leftovers", "start", "unpack"]

SESSION_SUFFIX = ".session"  # beside a bare attempt's workdir: its session, for leftovers


def unpack(archive: bytes, dest: Path, limits: Limits | None = None) -> None:
    """Extract a tar.gz working directory, checked again here whatever the coordinator said:
    nothing may land outside ``dest``, and bombs stop at the limits."""
    extract(archive, dest, limits or Limits())


def argv_of(spec: dict[str, Any]) -> list[str]:
    cmd = spec["command"]
    return ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]


class Run:
    """A started attempt."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        pumps: list[asyncio.Task[None]],
        box: AttemptBox | None = None,
        container: tuple[ContainerHost, str] | None = None,
    ) -> None:
        self.proc = proc
        self.pumps = pumps
        self.box = box
        self.container = container  # (runtime host, attempt id) of an image job
        self.stop_reason: str | None = None
        self.oom_killed = False
        # the attempt's running time on this host's monotonic clock: from the spawn of its
        # first process to that process's exit (what the tenant is billed, core.billing_time)
        self.spawned_mono = time.monotonic()
        self.exited_mono: float | None = None
        self.session_file: Path | None = None  # a bare attempt's record (reap_bare_leftovers)

    @property
    def runtime_s(self) -> float:
        """Seconds the attempt has run (so far, or in all once it exited)."""
        end = self.exited_mono if self.exited_mono is not None else time.monotonic()
        return max(0.0, end - self.spawned_mono)

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.exited_mono is None:
            self.exited_mono = time.monotonic()
        if self.container is not None:
            # the client is gone; the container must be too (it may outlive a killed client)
            host, attempt_id = self.container
            await asyncio.to_thread(host.remove, attempt_id)
        if self.box is not None:
            # the leader is gone: whatever it left behind (setsid daemons) goes too
            await asyncio.to_thread(self.box.kill)
            self.oom_killed = self.box.oom_killed()
        elif self.session_file is not None:
            # a bare attempt: what the leader left in its session goes too (and its pipes close)
            await asyncio.to_thread(_kill_session, self.proc.pid, 0)
        await asyncio.gather(*self.pumps, return_exceptions=True)
        return code

    def signal_group(self, sig: int) -> None:
        if self.container is not None:
            host, attempt_id = self.container
            host.stop(attempt_id, signal.Signals(sig).name.removeprefix("SIG"))
            return
        if self.box is not None:
            # every job process, but not bubblewrap itself: it would SIGKILL the job at once
            bwraps = {self.proc.pid, *_children(self.proc.pid)}
            self.box.cgroup.signal_all(sig, skip=bwraps)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, reason: str, grace_s: float = 5.0) -> None:
        """SIGTERM the whole attempt, then after the grace kill all of it (its cgroup when
        sandboxed, else its process group)."""
        self.stop_reason = reason
        await asyncio.to_thread(self.signal_group, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
        # children that ignored SIGTERM or outlived the leader
        if self.container is not None:
            await asyncio.to_thread(self.container[0].remove, self.container[1])
        elif self.box is not None:
            await asyncio.to_thread(self.box.kill)
        else:
            self.signal_group(signal.SIGKILL)

    def close(self) -> None:
        """Release what the attempt held: kill its cgroup, remove it, free its uid (sandboxed);
        kill what is left of its session (bare)."""
        if self.box is not None:
            self.box.close()
        if self.session_file is not None:
            # the session's number is not reused while any of its processes lives
            _kill_session(self.proc.pid, 0)
            self.session_file.unlink(missing_ok=True)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    st = _stat(pid)
    return int(st[19]) if st else None


def _kill_session(sid: int, since: int, sig: int = signal.SIGKILL) -> list[int]:
    """SIGKILL (or ``sig``) every process of session ``sid`` started at or after ``since``
    (clock ticks since boot: a later session that reused the number started after the recorded
    one's processes, but so would its own, so the window is the agent's restart only)."""
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        # fields after the name: state ppid pgrp session ... starttime (index 19)
        if st is None or int(st[3]) != sid or int(st[19]) < since:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry), sig)
            killed.append(int(entry))
    return killed


def reap_bare_leftovers(work: Path, keep: set[str] | None = None) -> dict[str, list[int]]:
    """Kill what bare (unsandboxed) attempts of an earlier run of the agent left: the leader
    died with the agent (parent-death signal), but its children did not. Each attempt ran in
    a session of its own, recorded beside its workdir; returns the pids killed by attempt."""
    killed: dict[str, list[int]] = {}
    for rec in sorted(work.glob("*" + SESSION_SUFFIX)):
        name = rec.name.removesuffix(SESSION_SUFFIX)
        if keep and name in keep:
            continue
        try:
            sid, since = (int(x) for x in rec.read_text().split())
        except (OSError, ValueError):
            sid = since = 0
        killed[name] = _kill_session(sid, since) if sid > 1 else []
        rec.unlink(missing_ok=True)
    return killed


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


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


async def _spawn(
    argv: list[str],
    env: dict[str, str],
    sink: LogSink,
    *,
    cwd: str | None,
    preexec: Callable[[], None] | None,
    pass_fds: tuple[int, ...] = (),
) -> tuple[asyncio.subprocess.Process, list[asyncio.Task[None]]]:
    """Start the attempt's first process in a session of its own, its output pumped to ``sink``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: cancel kills all of it
        preexec_fn=preexec,
        pass_fds=pass_fds,  # the seccomp filter, for bubblewrap
    )
    assert proc.stdout and proc.stderr
    pumps = [
        asyncio.create_task(_pump(proc.stdout, "stdout", sink)),
        asyncio.create_task(_pump(proc.stderr, "stderr", sink)),
    ]
    return proc, pumps


async def start(
    spec: dict[str, Any],
    workdir: Path,
    gpu_indices: list[int],
    attempt: dict[str, Any],
    sink: LogSink,
    sandbox: Sandbox | None = None,
    containers: ContainerHost | None = None,
) -> Run:
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    if spec.get("image"):
        return await _start_container(spec, workdir, gpu_indices, attempt, sink, containers)
    box: AttemptBox | None = None
    preexec: Callable[[], None] | None
    pass_fds: tuple[int, ...] = ()
    if sandbox is not None:
        box = await asyncio.to_thread(sandbox.open, str(attempt["attempt_id"]), spec)
    try:
        if box is not None and sandbox is not None:
            if box.uid is not None:
                prepare_workdir(workdir, (box.uid, box.uid))
            argv = sandbox.argv(argv_of(spec), workdir, gpu_indices, box)
            env = job_env(spec, gpu_indices, attempt, home=bwrap.WORKSPACE)
            cwd, preexec, pass_fds = "/", box.preexec, box.pass_fds
        else:
            argv = argv_of(spec)
            env = job_env(spec, gpu_indices, attempt, home=str(workdir))
            cwd = str(workdir)
            preexec = die_with_agent if sys.platform.startswith("linux") else None
        proc, pumps = await _spawn(argv, env, sink, cwd=cwd, preexec=preexec, pass_fds=pass_fds)
    except BaseException:
        if box is not None:
            box.close()
        raise
    if box is not None:
        box.spawned()
    run = Run(proc, pumps, box)
    if box is None and sys.platform.startswith("linux"):
        # its own session (start_new_session): recorded, so an agent killed with -9 can kill
        # the leader's children when it restarts (the cgroup does this for sandboxed ones)
        rec = workdir.parent / (workdir.name + SESSION_SUFFIX)
        rec.write_text(f"{proc.pid} {_start_time(proc.pid) or 0}\n")
        run.session_file = rec
    return run


async def _start_container(
    spec: dict[str, Any],
    workdir: Path,
    gpu_indices: list[int],
    attempt: dict[str, Any],
    sink: LogSink,
    host: ContainerHost | None,
) -> Run:
    """An image job: the runtime's client runs attached, so its output is the job's."""
    if host is None:
        raise RuntimeError("this node has no working container runtime for an image job")
    attempt_id = str(attempt["attempt_id"])
    env = job_env(spec, gpu_indices, attempt, home=bwrap.WORKSPACE)
    job = host.job(spec, argv_of(spec), workdir, gpu_indices, env, attempt_id)
    argv = host.argv(job)
    await asyncio.to_thread(prepare_workdir, workdir, NOBODY)
    preexec = die_with_agent if sys.platform.startswith("linux") else None
    proc, pumps = await _spawn(argv, host.env(), sink, cwd=None, preexec=preexec)
    return Run(proc, pumps, container=(host, attempt_id))
