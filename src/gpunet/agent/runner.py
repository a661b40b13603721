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

__all__ = [
    "NotStarted",
    "Run",
    "argv_of",
    "gated",
    "job_env",
    "reap_bare_leftovers",
    "start",
    "unpack",
]

SESSION_SUFFIX = ".session"  # beside a bare attempt's workdir: its session, for leftovers

# A bare attempt's leader starts as this shell, which waits on its stdin (a pipe from the agent)
# for "go" before it replaces itself with the job (same process, session and group; the job's
# stdin is /dev/null as before). So the job cannot run before the agent has recorded its
# session (the record is how the agent's watchdog finds it: an agent frozen between the spawn
# and the record would otherwise leave a job running, and ending, that no one can see or
# stop). Without "go" (the agent refused the start, or died) the leader exits 125 unrun.
GATE_SCRIPT = 'read -r go && [ "$go" = go ] || exit 125; exec "$@" </dev/null'
GATE_UNRUN = 125


class NotStarted(Exception):
    """The attempt was spawned but not let run (``start``'s ``may_run`` said no)."""


def gated(argv: list[str]) -> list[str]:
    """``argv`` behind the start gate (``GATE_SCRIPT``)."""
    return ["/bin/sh", "-c", GATE_SCRIPT, "gpunet-gate", *argv]


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
        self.gate: int | None = None  # a gated bare attempt's "go" pipe, until released

    def release(self) -> None:
        """Let a gated attempt's job run; its running time counts from here."""
        gate, self.gate = self.gate, None
        if gate is None:
            return
        self.spawned_mono = time.monotonic()
        try:
            os.write(gate, b"go\n")
        except OSError:  # the leader is gone already (killed while it waited)
            pass
        finally:
            os.close(gate)

    def close_gate(self) -> None:
        """Never let a gated attempt's job run: its leader reads end of file and exits."""
        gate, self.gate = self.gate, None
        if gate is not None:
            os.close(gate)

    @property
    def runtime_s(self) -> float:
        """Seconds the attempt has run (so far, or in all once it exited)."""
        end = self.exited_mono if self.exited_mono is not None else time.monotonic()
        return max(0.0, end - self.spawned_mono)

    async def wait(self, on_exit: Callable[[int], None] | None = None) -> int:
        """Wait for the leader's exit, then for what it left (its output, leftover processes).
        ``on_exit(code)`` is called as soon as the exit is seen, before any of that (the
        agent journals a success there: its exit status exists nowhere else meanwhile)."""
        code = await self._exit()
        if self.exited_mono is None:
            self.exited_mono = time.monotonic()
        if on_exit is not None:
            on_exit(code)
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
        await self.proc.wait()  # its pipes are closed now: the transport ends
        return code

    async def _exit(self) -> int:
        """The leader's exit code, as soon as it exits: its pidfd turns readable then, and the
        code is read without reaping it (WNOWAIT; asyncio's child watcher reaps it). Not
        ``proc.wait()``, which also waits for the end of the output (a daemon left holding
        the job's pipes holds it up). Without pidfds: ``proc.wait()``."""
        try:
            fd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            return await self.proc.wait()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def check() -> None:
            if done.done():
                return
            code = self.proc.returncode
            if code is None:
                try:
                    info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOWAIT | os.WNOHANG)
                except ChildProcessError:  # reaped: asyncio is about to set the returncode
                    info = None
                if info is not None and info.si_pid:
                    exited = info.si_code == os.CLD_EXITED
                    code = info.si_status if exited else -info.si_status
            if code is None:
                loop.call_later(0.005, check)
                return
            self.exited_mono = time.monotonic()
            done.set_result(code)

        def readable() -> None:
            loop.remove_reader(fd)
            check()

        loop.add_reader(fd, readable)
        try:
            return await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)

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
        self.close_gate()
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
    stdin: int = asyncio.subprocess.DEVNULL,
) -> tuple[asyncio.subprocess.Process, list[asyncio.Task[None]]]:
    """Start the attempt's first process in a session of its own, its output pumped to ``sink``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
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
    may_run: Callable[[], str | None] | None = None,
) -> Run:
    """Start an attempt. A bare attempt on Linux is spawned behind the start gate
    (``GATE_SCRIPT``) and let run only once its session is recorded and ``may_run`` (asked
    then) returns None; a reason instead: its leader is ended unrun and ``NotStarted`` raised
    with that reason."""
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    if spec.get("image"):
        return await _start_container(spec, workdir, gpu_indices, attempt, sink, containers)
    box: AttemptBox | None = None
    preexec: Callable[[], None] | None
    pass_fds: tuple[int, ...] = ()
    gate: tuple[int, int] | None = None  # (read end: the leader's stdin, write end: ours)
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
            preexec = None
            if sys.platform.startswith("linux"):
                preexec = die_with_agent
                gate = os.pipe()
                argv = gated(argv)
        try:
            proc, pumps = await _spawn(
                argv,
                env,
                sink,
                cwd=cwd,
                preexec=preexec,
                pass_fds=pass_fds,
                stdin=gate[0] if gate else asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            if gate is not None:
                os.close(gate[1])
            raise
        finally:
            if gate is not None:
                os.close(gate[0])  # the leader holds it now
    except BaseException:
        if box is not None:
            box.close()
        raise
    if box is not None:
        box.spawned()
    run = Run(proc, pumps, box)
    if gate is not None:
        run.gate = gate[1]
        # its own session (start_new_session): recorded, so an agent killed with -9 can kill
        # the leader's children when it restarts (the cgroup does this for sandboxed ones),
        # and its watchdog can find it; only then may the job run
        rec = workdir.parent / (workdir.name + SESSION_SUFFIX)
        try:
            rec.write_text(f"{proc.pid} {_start_time(proc.pid) or 0}\n")
            run.session_file = rec
            why = may_run() if may_run is not None else None
        except BaseException:
            await _unrun(run)
            raise
        if why is not None:
            await _unrun(run)
            raise NotStarted(why)
        run.release()
    return run


async def _unrun(run: Run) -> None:
    """End a gated attempt that was never let run, and release what it held."""
    run.close_gate()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(run.proc.pid, signal.SIGKILL)
    await run.proc.wait()
    await asyncio.gather(*run.pumps, return_exceptions=True)
    run.close()


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
