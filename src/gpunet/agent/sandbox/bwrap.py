"""The bubblewrap command line of one attempt, as a pure function of what the host offers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

BWRAP = "/usr/bin/bwrap"
SETPRIV = "/usr/bin/setpriv"
WORKSPACE = "/workspace"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


@dataclass(frozen=True)
class HostView:
    """What the host has: each system dir that exists (its symlink target, or None for a real
    directory) and the names under /dev."""

    system: dict[str, str | None]
    dev: frozenset[str] = field(default_factory=frozenset)


def read_host() -> HostView:
    system: dict[str, str | None] = {}
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            system[d] = os.readlink(d)
        elif os.path.isdir(d):
            system[d] = None
    try:
        dev = frozenset(os.listdir("/dev"))
    except OSError:
        dev = frozenset()
    return HostView(system, dev)


def gpu_devices(gpu_indices: list[int], dev: frozenset[str]) -> list[str]:
    """The device nodes of exactly these GPUs plus the driver's shared ones, where they exist."""
    names = [f"nvidia{i}" for i in gpu_indices]
    if not any(n in dev for n in names):
        return []  # simulated GPUs or no driver: no device nodes to share
    return [f"/dev/{n}" for n in (*names, *NVIDIA_SHARED) if n in dev]


def _under(path: str, roots: list[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(r) or PurePosixPath(r) in p.parents for r in roots)


def build_argv(
    command: list[str],
    *,
    workdir: str,
    host: HostView,
    gpu_indices: list[int],
    ro_paths: list[str],
    network: str = "host",
    uid: int | None = None,
    seccomp_fd: int | None = None,
    bwrap: str = BWRAP,
) -> list[str]:
    """The full argv: bwrap, its options, the uid drop (when ``uid``: the agent is root), then
    ``command``. ``ro_paths``: extra host paths shown read-only at the same place (the agent's
    Python prefix, the owner's ``--sandbox-ro``). ``seccomp_fd``: an inherited fd holding the
    seccomp filter (``seccomp.program``), installed right before the command runs."""
    if network not in ("host", "none"):
        raise ValueError(f"network {network!r}: must be host or none")
    argv = [
        bwrap,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]
    if uid is None:  # not root: bubblewrap runs in a user namespace; keep the job from nesting
        argv += ["--unshare-user", "--disable-userns"]
    if network == "none":
        argv.append("--unshare-net")
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--hostname", "gpunet-job", "--proc", "/proc", "--dev", "/dev"]
    bound: list[str] = []
    for d, target in sorted(host.system.items()):
        if target is None:
            argv += ["--ro-bind", d, d]
            bound.append(d)
        else:
            argv += ["--symlink", target, d]
    # private /tmp and /dev/shm before the extra paths: one of them may lie in the host's /tmp
    # (an agent installed in a virtual environment there), and a later tmpfs would hide it
    argv += ["--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm"]
    made: set[str] = set()
    for p in sorted(set(ro_paths), key=lambda x: (len(PurePosixPath(x).parts), x)):
        if _under(p, bound):
            continue
        # bubblewrap makes missing parents 0700: make them traversable for the job
        for parent in reversed(PurePosixPath(p).parents):
            s = str(parent)
            if s == "/" or s in made or _under(s, bound):
                continue
            argv += ["--perms", "0755", "--dir", s]
            made.add(s)
        argv += ["--ro-bind", p, p]
        bound.append(p)
    devices = gpu_devices(gpu_indices, host.dev)
    for dev in devices:
        argv += ["--dev-bind", dev, dev]
    if devices:  # the CUDA driver reads the PCI topology
        argv += ["--ro-bind", "/sys", "/sys"]
    argv += ["--bind", workdir, WORKSPACE, "--chdir", WORKSPACE, "--"]
    if uid is not None:
        argv += [
            SETPRIV,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
        ]
    return argv + command


def python_paths() -> list[str]:
    """The agent's Python (venv and base install), so ``python3`` works in the sandbox."""
    import sys

    paths = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths |= {sys.prefix}  # the venv's own path, as its bin/ symlinks name it
    return sorted(paths)
