"""Everything one sandboxed attempt holds (uid, cgroup) and how its leader is started."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpunet.agent.sandbox import bwrap, seccomp
from gpunet.agent.sandbox.cgroups import (
    AttemptCgroup,
    CgroupTree,
    Limits,
    agent_parent,
    leftovers,
)
from gpunet.agent.sandbox.uids import UidPool

log = logging.getLogger("gpunet.agent.sandbox")

_PR_SET_PDEATHSIG = 1
GiB = 1024**3


def _libc() -> Any:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def die_with_agent() -> None:
    """In the child: if the agent dies (even by kill -9), the job's leader dies too."""
    with contextlib.suppress(Exception):
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def joiner(procs_files: list[str]) -> Callable[[], None]:
    """A preexec function: the child joins its cgroups (all hierarchies) before it execs, so
    the job's first instruction already runs inside. Raw syscalls only: it runs after fork."""
    paths = [p.encode() for p in procs_files]

    def preexec() -> None:
        for p in paths:
            fd = os.open(p, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0": the writing process itself
            finally:
                os.close(fd)
        die_with_agent()

    return preexec


def effective_limits(owner: Limits, spec: dict[str, Any]) -> Limits:
    """The job's own requests (``resources.memory_gb``, ``resources.cpus``), capped by the
    owner's per-attempt limits."""
    res = spec.get("resources") or {}
    memory = owner.memory_bytes
    if res.get("memory_gb"):
        asked = int(float(res["memory_gb"]) * GiB)
        memory = asked if memory is None else min(memory, asked)
    cpus = owner.cpus
    if res.get("cpus"):
        asked_cpus = float(res["cpus"])
        cpus = asked_cpus if cpus is None else min(cpus, asked_cpus)
    return Limits(memory_bytes=memory, pids=owner.pids, cpus=cpus)


@dataclass
class SandboxConfig:
    """The owner's choices for sandboxed attempts."""

    limits: Limits = field(default_factory=lambda: Limits(pids=4096))
    network: str = "host"
    ro_extra: list[str] = field(default_factory=list)


class AttemptBox:
    """One attempt's uid, cgroup and seccomp filter fd; ``close`` kills what is left, removes
    it, frees the uid.

    The leader is started with ``preexec_fn=box.preexec`` and ``pass_fds=box.pass_fds`` (the
    filter, which bubblewrap reads); ``spawned`` then closes the agent's copy of the fd."""

    def __init__(
        self, sandbox: Sandbox, cgroup: AttemptCgroup, uid: int | None, seccomp_fd: int | None
    ) -> None:
        self.sandbox = sandbox
        self.cgroup = cgroup
        self.uid = uid
        self.seccomp_fd = seccomp_fd
        self.preexec = joiner(cgroup.procs_files())
        self.closed = False

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.seccomp_fd is None else (self.seccomp_fd,)

    def spawned(self) -> None:
        """The leader has its copy of the filter fd: the agent's goes."""
        if self.seccomp_fd is not None:
            fd, self.seccomp_fd = self.seccomp_fd, None
            os.close(fd)

    def kill(self) -> list[int]:
        return self.cgroup.kill()

    def oom_killed(self) -> bool:
        return self.cgroup.oom_kills() > 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.spawned()
        try:
            self.cgroup.kill()
            self.cgroup.remove()
        finally:
            if self.uid is not None and self.sandbox.uids is not None:
                self.sandbox.uids.release(self.uid)


class Sandbox:
    """bubblewrap + a uid per attempt (when root) + a cgroup per attempt + the seccomp filter
    (``seccomp_filter``: the compiled program, None for none)."""

    def __init__(
        self,
        home: Path,
        config: SandboxConfig,
        *,
        tree: CgroupTree | None = None,
        uids: UidPool | None = None,
        host: bwrap.HostView | None = None,
        bwrap_path: str = bwrap.BWRAP,
        seccomp_filter: bytes | None = None,
    ) -> None:
        self.config = config
        self.seccomp_filter = seccomp_filter
        self.tree = tree or CgroupTree()
        self.parent = agent_parent(home)
        self.uids = uids
        self.host = host or bwrap.read_host()
        self.bwrap_path = bwrap_path
        self.ro_paths = [*bwrap.python_paths(), *config.ro_extra]

    def open(self, attempt_id: str, spec: dict[str, Any]) -> AttemptBox:
        uid = self.uids.acquire() if self.uids is not None else None
        fd: int | None = None
        try:
            if self.seccomp_filter is not None:
                fd = seccomp.pipe_fd(self.seccomp_filter)
            cg = AttemptCgroup(self.tree, self.parent, attempt_id)
            cg.create(effective_limits(self.config.limits, spec))
        except BaseException:
            if fd is not None:
                os.close(fd)
            if uid is not None and self.uids is not None:
                self.uids.release(uid)
            raise
        return AttemptBox(self, cg, uid, fd)

    def argv(
        self, command: list[str], workdir: Path, gpu_indices: list[int], box: AttemptBox
    ) -> list[str]:
        return bwrap.build_argv(
            command,
            workdir=str(workdir),
            host=self.host,
            gpu_indices=gpu_indices,
            ro_paths=self.ro_paths,
            network=self.config.network,
            uid=box.uid,
            seccomp_fd=box.seccomp_fd,
            bwrap=self.bwrap_path,
        )

    def reap_leftovers(self, keep: set[str] | None = None) -> dict[str, list[int]]:
        """Kill and remove attempt cgroups this agent no longer runs (e.g. after kill -9);
        returns what was killed, by cgroup name."""
        killed: dict[str, list[int]] = {}
        for name in leftovers(self.tree, self.parent):
            if keep and name in keep:
                continue
            cg = AttemptCgroup(self.tree, self.parent, name)
            killed[name] = cg.kill()
            try:
                cg.remove()
            except OSError as exc:
                log.warning("could not remove leftover cgroup %s: %s", name, exc)
        return killed

    def close(self) -> None:
        """Remove this agent's (empty) cgroup parent; one still holding attempts stays."""
        for d in self.tree.dirs(self.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
