"""One cgroup per attempt, under a parent named for this agent.

Two layouts: pure cgroup v2 (everything in one tree), or hybrid, where limits live in the v1
controllers (pids, memory, cpu) and the v2 tree (``unified``) tracks and kills. Every attempt
leader joins its cgroup before it execs, so nothing it starts can escape accounting or the final
kill, not even a ``setsid`` double-forked daemon.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_LIMITS = ("pids", "memory", "cpu")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    """Per-attempt limits; None means no limit."""

    memory_bytes: int | None = None
    pids: int | None = None
    cpus: float | None = None


class CgroupTree:
    """The cgroup mounts this host offers and how gpunet uses them."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.v1: dict[str, Path] = {}
        if (root / "cgroup.controllers").exists():
            self.mode = "v2"
            self.v2 = root
        else:
            self.mode = "hybrid"
            self.v2 = root / "unified"
            for ctrl in (*V1_LIMITS, "freezer"):
                if (root / ctrl / "cgroup.procs").exists():
                    self.v1[ctrl] = root / ctrl

    def usable(self) -> str | None:
        """None when gpunet can use this tree; else why not."""
        if not (self.v2 / "cgroup.procs").exists():
            return f"no cgroup v2 tree at {self.v2}"
        if not os.access(self.v2, os.W_OK):
            return f"{self.v2} is not writable (run the agent as root)"
        if self.mode == "hybrid":
            missing = [c for c in V1_LIMITS if c not in self.v1]
            if missing:
                return f"cgroup v1 controllers missing: {', '.join(missing)}"
        return None

    def describe(self) -> str:
        if self.mode == "v2":
            return "cgroup v2"
        return f"cgroup v1 {'/'.join(c for c in V1_LIMITS if c in self.v1)} + v2 kill"

    def dirs(self, rel: Path) -> list[Path]:
        """The directories of ``rel`` in every hierarchy gpunet uses, the v2 one first."""
        return [self.v2 / rel, *(base / rel for base in self.v1.values())]


def agent_parent(home: Path) -> Path:
    """The cgroup parent of one agent: stable across restarts of the agent on this home."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return Path("gpunet") / f"agent-{digest}"


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _enable_v2_controllers(tree: CgroupTree, rel: Path) -> None:
    """On pure v2, limits need the controllers enabled in every ancestor's subtree_control."""
    wanted = {"pids", "memory", "cpu"}
    cur = tree.v2
    for part in rel.parts:  # every ancestor of the attempt's cgroup, made on the way down
        try:
            available = set((cur / "cgroup.controllers").read_text().split())
        except OSError:
            available = set()
        if wanted & available:
            with contextlib.suppress(OSError):
                _write(
                    cur / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted & available)
                )
        cur = cur / part
        cur.mkdir(exist_ok=True)


class AttemptCgroup:
    """The cgroup of one attempt (in each hierarchy of ``tree``)."""

    def __init__(self, tree: CgroupTree, parent: Path, name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"cgroup name {name!r}: must be one plain path component")
        self.tree = tree
        self.rel = parent / name
        self.name = name

    @property
    def dirs(self) -> list[Path]:
        return self.tree.dirs(self.rel)

    def procs_files(self) -> list[str]:
        """Where a process writes its pid to join (all hierarchies)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def create(self, limits: Limits) -> None:
        if self.tree.mode == "v2":
            _enable_v2_controllers(self.tree, self.rel)
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self._apply(limits)

    def _apply(self, limits: Limits) -> None:
        t = self.tree
        if t.mode == "v2":
            d = t.v2 / self.rel
            if limits.pids is not None:
                _write(d / "pids.max", str(limits.pids))
            if limits.memory_bytes is not None:
                _write(d / "memory.max", str(limits.memory_bytes))
                with contextlib.suppress(OSError):
                    _write(d / "memory.swap.max", "0")
            if limits.cpus is not None:
                _write(d / "cpu.max", f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            return
        if limits.pids is not None:
            _write(t.v1["pids"] / self.rel / "pids.max", str(limits.pids))
        if limits.memory_bytes is not None:
            mem = t.v1["memory"] / self.rel
            _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
            with contextlib.suppress(OSError):  # absent without swap accounting
                _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if limits.cpus is not None:
            cpu = t.v1["cpu"] / self.rel
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(int(limits.cpus * CPU_PERIOD_US)))

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(out)

    def signal_all(self, sig: int, *, skip: set[int] | None = None) -> None:
        for pid in self.pids():
            if skip and pid in skip:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self, timeout_s: float = 5.0) -> list[int]:
        """SIGKILL everything in the cgroup and wait until it is empty; returns the pids seen."""
        seen = self.pids()
        kill_file = self.tree.v2 / self.rel / "cgroup.kill"
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids:
                return seen
            seen = sorted(set(seen) | set(pids))
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
            else:
                self._freeze_and_kill()
            if time.monotonic() > deadline:
                return seen
            time.sleep(0.01)

    def _freeze_and_kill(self) -> None:
        """v1 fallback: freeze so nothing forks while we kill, kill every pid, thaw."""
        freezer = self.tree.v1.get("freezer")
        state = freezer / self.rel / "freezer.state" if freezer else None
        if state is not None:
            with contextlib.suppress(OSError):
                _write(state, "FROZEN")
        self.signal_all(signal.SIGKILL)
        if state is not None:
            with contextlib.suppress(OSError):
                _write(state, "THAWED")

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        t = self.tree
        try:
            if t.mode == "v2":
                text = (t.v2 / self.rel / "memory.events").read_text()
            else:
                text = (t.v1["memory"] / self.rel / "memory.oom_control").read_text()
        except (OSError, KeyError):
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, timeout_s: float = 5.0) -> None:
        """Remove the (empty) cgroup in every hierarchy; retries while the last exits settle."""
        deadline = time.monotonic() + timeout_s
        for d in self.dirs:
            while d.exists():
                try:
                    d.rmdir()
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        break
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def leftovers(tree: CgroupTree, parent: Path) -> list[str]:
    """Names of the attempt cgroups under this agent's parent, in any hierarchy."""
    names: set[str] = set()
    for d in tree.dirs(parent):
        with contextlib.suppress(OSError):
            names.update(p.name for p in d.iterdir() if p.is_dir())
    return sorted(names)
