"""Runs an attempt in a container (podman or docker) where the owner has a working runtime.

Three parts:

- ``detect_runtimes``: which runtime actually runs containers here (a real probe, not a
  binary on PATH), its version, and warnings for container runtimes with known escapes.
- ``build_run_argv``: a pure function from an attempt to the ``podman run`` / ``docker run``
  argv: no capabilities, no new privileges, default seccomp, read-only root, the working
  directory at /workspace, a non-root user, pids/memory/CPU limits, a private network (the
  runtime's bridge) or none, never the host's, exactly the attempt's GPUs, never
  ``--privileged``, never a pull.
- ``kill`` / ``remove`` / ``cleanup_leftovers``: stop containers by name or by the agent's
  label, each call bounded in time.

Podman is pointed at the ``containers.conf`` shipped next to this module (``podman_env``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
WORKSPACE = "/workspace"
LABEL_ATTEMPT = "gpunet.attempt"
LABEL_AGENT = "gpunet.agent"
NOBODY = (65534, 65534)
CDI_SPEC_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))

# Podman's exit status when the runtime created the container and only the command was missing.
_EXIT_COMMAND_NOT_FOUND = 127
_PROBE_COMMAND = "/gpunet-probe-absent"

# Fixed releases of container runtimes with known escapes.
RUNC_FIXED = (1, 1, 12)  # CVE-2024-21626: leaked fd lets a container reach the host's root
NVIDIA_CTK_FIXED = (1, 16, 2)  # CVE-2024-0132: TOCTOU lets a crafted image mount the host
# Distribution builds older than the fixed release that carry the fix as a patch.
_RUNC_PATCHED_BUILDS = (re.compile(r"^1\.1\.5\+ds1-1\+deb12u([1-9]\d*)$"),)


@dataclass(frozen=True)
class RuntimeInfo:
    """A container runtime found on this machine and whether it can run a job container."""

    name: str  # "podman" | "docker"
    version: str | None
    works: bool
    reason: str
    path: str | None = None
    # OCI runtime to ask for explicitly (podman ``--runtime``), when the default one failed
    oci_runtime: str | None = None
    cdi: bool = False  # accepts CDI device names such as nvidia.com/gpu=0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostLimits:
    """Ceilings the container's rlimits must stay under (read once by ``read_host_limits``)."""

    nofile_hard: int
    nproc_hard: int
    pid_max: int


@dataclass(frozen=True)
class ContainerJob:
    """What one attempt's container needs; ``env`` is the job's whole environment."""

    attempt_id: str
    agent_key: str
    image: str
    command: Sequence[str]
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: Sequence[int] = ()  # NVML indices, used for CDI names
    # /dev/nvidiaN minor number of each GPU index when it differs from the index
    device_minors: Mapping[int, int] = field(default_factory=dict)
    user: tuple[int, int] = NOBODY
    pids_limit: int = 1024
    memory_bytes: int | None = None
    cpus: float | None = None
    nofile: int = 65536
    tmp_bytes: int = 1 << 30
    shm_bytes: int | None = None
    # private: the runtime's own network namespace (bridge, NAT); none: loopback only; never
    # the host's: a job must not reach services bound to the owner's loopback
    network: str = "none"


def container_name(attempt_id: str) -> str:
    """The container's name for an attempt (names allow [a-zA-Z0-9_.-])."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", attempt_id)
    return f"gpunet-{safe}"


def _check_job(job: ContainerJob) -> None:
    if not job.image or job.image.startswith("-"):
        raise ValueError(f"image: {job.image!r} is not an image reference")
    if not job.command:
        raise ValueError("command: empty")
    if job.user[0] == 0 or job.user[1] == 0:
        raise ValueError(f"user: {job.user[0]}:{job.user[1]} is root; jobs never run as root")
    if job.pids_limit < 1:
        raise ValueError(f"pids_limit: {job.pids_limit} must be at least 1")
    if job.memory_bytes is not None and job.memory_bytes < (6 << 20):
        raise ValueError(f"memory_bytes: {job.memory_bytes} is below 6 MiB")
    if job.cpus is not None and job.cpus <= 0:
        raise ValueError(f"cpus: {job.cpus} must be positive")
    if not job.workdir.is_absolute():
        raise ValueError(f"workdir: {job.workdir} must be an absolute path")
    if "," in str(job.workdir) or ":" in str(job.workdir):
        raise ValueError(f"workdir: {job.workdir} may not hold ',' or ':' (mount syntax)")
    for key in job.env:
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env: {key!r} is not a variable name")
    for value in job.env.values():
        if "\0" in value:
            raise ValueError("env: a value holds a NUL byte")
    if any(g < 0 for g in job.gpus):
        raise ValueError(f"gpus: {list(job.gpus)} holds a negative index")


def gpu_device_args(job: ContainerJob, *, cdi: bool) -> list[str]:
    """Only the attempt's GPUs: CDI names, or the device nodes plus the control nodes."""
    if not job.gpus:
        return []
    if cdi:
        return [f"--device=nvidia.com/gpu={i}" for i in job.gpus]
    nodes = [f"/dev/nvidia{job.device_minors.get(i, i)}" for i in job.gpus]
    nodes += ["/dev/nvidiactl", "/dev/nvidia-uvm"]
    return [f"--device={n}" for n in nodes]


def build_run_argv(
    runtime: RuntimeInfo, job: ContainerJob, *, host: HostLimits, cdi: bool
) -> list[str]:
    """The full argv running ``job`` attached (its output is the container's stdout/stderr).

    ``cdi`` is true when the runtime takes CDI names and a CDI spec for NVIDIA GPUs exists
    (``cdi_available``). Raises ValueError naming the bad field.
    """
    _check_job(job)
    exe = runtime.path or runtime.name
    argv = [exe]
    if runtime.name == "podman" and runtime.oci_runtime:
        argv += ["--runtime", runtime.oci_runtime]
    uid, gid = job.user
    # RLIMIT_NPROC counts the uid's processes host-wide; the pids cgroup is the real bound.
    nproc = min(host.nproc_hard, host.pid_max)
    nofile = min(job.nofile, host.nofile_hard)
    argv += [
        "run",
        "--rm",
        f"--name={container_name(job.attempt_id)}",
        f"--label={LABEL_ATTEMPT}={job.attempt_id}",
        f"--label={LABEL_AGENT}={job.agent_key}",
        "--pull=never",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--read-only",
        f"--tmpfs=/tmp:rw,nosuid,nodev,size={job.tmp_bytes}",
        f"--volume={job.workdir}:{WORKSPACE}:rw,Z",
        f"--workdir={WORKSPACE}",
        f"--user={uid}:{gid}",
        f"--pids-limit={job.pids_limit}",
        f"--ulimit=nofile={nofile}:{nofile}",
        f"--ulimit=nproc={nproc}:{nproc}",
        "--network=bridge" if job.network == "private" else "--network=none",
        "--log-driver=none",
    ]
    if runtime.name == "podman":
        argv.append("--http-proxy=false")
    if job.memory_bytes is not None:
        # the same value for memory+swap: no swap beyond the memory limit
        argv += [f"--memory={job.memory_bytes}", f"--memory-swap={job.memory_bytes}"]
    if job.cpus is not None:
        argv.append(f"--cpus={job.cpus:g}")
    if job.shm_bytes is not None:
        argv.append(f"--shm-size={job.shm_bytes}")
    argv += gpu_device_args(job, cdi=cdi)
    env = dict(job.env)
    if job.gpus:
        # inside the container the attempt's GPUs are numbered from 0
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(job.gpus)))
    argv += [f"--env={k}={v}" for k, v in sorted(env.items())]
    argv += ["--", job.image, *job.command]
    return argv


def podman_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run podman with: the caller's plus the shipped containers.conf."""
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def runtime_env(runtime: RuntimeInfo) -> dict[str, str]:
    """The environment for any command of ``runtime`` (run, kill, ps, rm)."""
    return podman_env() if runtime.name == "podman" else dict(os.environ)


# ---- detection ------------------------------------------------------------------------------


def read_host_limits() -> HostLimits:
    """This process's hard nofile/nproc limits and the kernel's pid_max."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text().strip())
    except (OSError, ValueError):
        pid_max = 32768
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    unlimited = resource.RLIM_INFINITY
    return HostLimits(
        nofile_hard=1 << 20 if nofile == unlimited else nofile,
        nproc_hard=pid_max if nproc == unlimited else nproc,
        pid_max=pid_max,
    )


def cdi_spec_present(dirs: Sequence[Path] = CDI_SPEC_DIRS) -> bool:
    """Whether a CDI spec for NVIDIA GPUs exists (``nvidia-ctk cdi generate`` writes it)."""
    names = ("nvidia.yaml", "nvidia.json")
    return any((d / n).is_file() for d in dirs for n in names)


def cdi_available(runtime: RuntimeInfo) -> bool:
    return runtime.cdi and cdi_spec_present()


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def runc_warning(version_output: str) -> str | None:
    """A warning when ``runc --version`` names a release open to CVE-2024-21626."""
    version = _version_tuple(version_output)
    if version is None or version >= RUNC_FIXED:
        return None
    commit = re.search(r"^commit:\s*(\S+)", version_output, re.MULTILINE)
    if commit and any(p.match(commit.group(1)) for p in _RUNC_PATCHED_BUILDS):
        return None
    shown = ".".join(map(str, version))
    return (
        f"runc {shown} is older than 1.1.12 and open to CVE-2024-21626 "
        "(a job can reach the host's filesystem): upgrade runc"
    )


def nvidia_ctk_warning(version_output: str) -> str | None:
    """A warning when ``nvidia-ctk --version`` names a release open to CVE-2024-0132."""
    version = _version_tuple(version_output)
    if version is None or version >= NVIDIA_CTK_FIXED:
        return None
    shown = ".".join(map(str, version))
    return (
        f"NVIDIA Container Toolkit {shown} is older than 1.16.2 and open to CVE-2024-0132 "
        "(a crafted image can reach the host's filesystem): upgrade nvidia-container-toolkit"
    )


@dataclass(frozen=True)
class _Result:
    code: int
    out: str
    err: str


def _run(argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> _Result:
    """Run a short command; a missing binary or a timeout is a result, not an exception."""
    try:
        p = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        return _Result(127, "", str(exc))
    except subprocess.TimeoutExpired:
        return _Result(124, "", f"{' '.join(argv[:3])} timed out after {timeout_s:g} s")
    return _Result(p.returncode, p.stdout, p.stderr)


def _first_error(r: _Result) -> str:
    text = (r.err.strip() or r.out.strip() or f"exit status {r.code}").splitlines()
    errors = [line for line in text if "error" in line.lower()]
    return (errors[-1] if errors else text[-1]).strip()


def _tool_warnings(runc_version: str | None, timeout_s: float) -> list[str]:
    """Escape warnings for the runc in use (its ``--version`` text) and the NVIDIA toolkit."""
    found: list[str] = []
    if runc_version:
        w = runc_warning(runc_version)
        if w:
            found.append(w)
    ctk = shutil.which("nvidia-ctk")
    if ctk:
        w = nvidia_ctk_warning(_run([ctk, "--version"], timeout_s=timeout_s).out)
        if w:
            found.append(w)
    return found


def _podman_oci_runtime(
    exe: str, oci_runtime: str | None, timeout_s: float
) -> tuple[_Result, dict[str, str]]:
    """Podman's view of an OCI runtime: name, path, package and its ``--version`` text."""
    argv = [exe] + (["--runtime", oci_runtime] if oci_runtime else [])
    r = _run(
        [*argv, "info", "--format={{json .Host.OCIRuntime}}"], timeout_s=timeout_s, env=podman_env()
    )
    try:
        data = json.loads(r.out) if r.code == 0 else {}
    except ValueError:
        data = {}
    return r, {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _podman_probe_run(
    exe: str, oci_runtime: str | None, host: HostLimits, timeout_s: float
) -> _Result:
    """Create and start a container from an empty root filesystem (no image, no registry).

    The runtime sets up namespaces, cgroups, rlimits and seccomp with the same flags a job
    gets, then fails to find the command: exit 127 means everything before exec worked.
    """
    nproc = min(host.nproc_hard, host.pid_max)
    nofile = min(1024, host.nofile_hard)
    with tempfile.TemporaryDirectory(prefix="gpunet-probe-") as rootfs:
        os.chmod(rootfs, 0o755)  # the job's user must be able to look inside
        argv = [exe] + (["--runtime", oci_runtime] if oci_runtime else [])
        argv += [
            "run",
            "--rm",
            "--network=none",
            "--read-only",
            "--cap-drop=all",
            "--security-opt=no-new-privileges",
            f"--user={NOBODY[0]}:{NOBODY[1]}",
            "--pids-limit=16",
            "--memory=64m",
            f"--ulimit=nofile={nofile}:{nofile}",
            f"--ulimit=nproc={nproc}:{nproc}",
            "--rootfs",  # a flag: the next argument is the root filesystem
            rootfs,
            _PROBE_COMMAND,
        ]
        return _run(argv, timeout_s=timeout_s, env=podman_env())


def detect_podman(timeout_s: float = 30.0, host: HostLimits | None = None) -> RuntimeInfo:
    """Find podman and check it runs a container, trying runc when the default runtime fails."""
    exe = shutil.which("podman")
    if exe is None:
        return RuntimeInfo("podman", None, False, "podman not found on PATH")
    v = _run([exe, "--version"], timeout_s=timeout_s)
    version = v.out.strip().rsplit(" ", 1)[-1] if v.code == 0 else None
    info, oci = _podman_oci_runtime(exe, None, timeout_s)
    if info.code != 0:
        return RuntimeInfo(
            "podman", version, False, f"podman info failed: {_first_error(info)}", exe
        )
    host = host or read_host_limits()
    # podman reads CDI specs since 4.1
    cdi = (_version_tuple(version or "") or (0,)) >= (4, 1, 0)
    probe = _podman_probe_run(exe, None, host, timeout_s)
    chosen: str | None = None
    note = ""
    if probe.code != _EXIT_COMMAND_NOT_FOUND:
        default = oci.get("name", "unknown")
        failed = f"default runtime {default} cannot run a container: {_first_error(probe)}"
        if default == "runc":
            return RuntimeInfo("podman", version, False, failed, exe, cdi=cdi)
        # crun refuses hosts whose cgroup v2 tree holds controllers next to v1 ("hybrid")
        retry = _podman_probe_run(exe, "runc", host, timeout_s)
        if retry.code != _EXIT_COMMAND_NOT_FOUND:
            reason = f"{failed}; runc cannot either: {_first_error(retry)}"
            return RuntimeInfo("podman", version, False, reason, exe, cdi=cdi)
        chosen, note = "runc", f" ({failed}; using runc)"
        oci = _podman_oci_runtime(exe, chosen, timeout_s)[1]
    used = oci.get("name", chosen or "unknown")
    runc_version = oci.get("version") if used == "runc" else None
    warnings = _tool_warnings(runc_version, timeout_s)
    reason = f"podman {version} runs containers with {used} {oci.get('path', '')}".rstrip()
    return RuntimeInfo("podman", version, True, reason + note, exe, chosen, cdi, tuple(warnings))


def detect_docker(timeout_s: float = 30.0) -> RuntimeInfo:
    """Find docker and check its daemon answers (a client binary alone does not work)."""
    exe = shutil.which("docker")
    if exe is None:
        return RuntimeInfo("docker", None, False, "docker not found on PATH")
    info = _run([exe, "info", "--format={{json .}}"], timeout_s=timeout_s)
    try:
        data = json.loads(info.out) if info.out.strip() else {}
    except ValueError:
        data = {}
    errors = data.get("ServerErrors") if isinstance(data, dict) else None
    if info.code != 0 or errors or not data.get("ServerVersion"):
        why = "; ".join(errors) if errors else _first_error(info)
        return RuntimeInfo("docker", None, False, f"docker daemon not usable: {why}", exe)
    version = str(data["ServerVersion"])
    cdi = bool(data.get("CDISpecDirs"))
    default_oci = str(data.get("DefaultRuntime") or "runc")
    runc = shutil.which("runc") if default_oci == "runc" else None
    runc_version = _run([runc, "--version"], timeout_s=timeout_s).out if runc else None
    warnings = _tool_warnings(runc_version, timeout_s)
    reason = f"docker {version} daemon answers (default runtime {default_oci})"
    return RuntimeInfo("docker", version, True, reason, exe, None, cdi, tuple(warnings))


def detect_runtimes(timeout_s: float = 30.0) -> list[RuntimeInfo]:
    """Podman then docker, each with a real probe; the first that works is the one to use."""
    return [detect_podman(timeout_s), detect_docker(timeout_s)]


def first_working(runtimes: Sequence[RuntimeInfo]) -> RuntimeInfo | None:
    return next((r for r in runtimes if r.works), None)


# ---- working directory and stopping ---------------------------------------------------------


def prepare_workdir(workdir: Path, user: tuple[int, int] = NOBODY) -> None:
    """Give the job's (non-root) user its working directory, links not followed."""
    uid, gid = user
    os.lchown(workdir, uid, gid)
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def kill(runtime: RuntimeInfo, name: str, *, signal: str = "KILL", timeout_s: float = 15.0) -> bool:
    """Send ``signal`` to the container's processes; False when it is not running."""
    exe = runtime.path or runtime.name
    r = _run(
        [exe, "kill", f"--signal={signal}", name], timeout_s=timeout_s, env=runtime_env(runtime)
    )
    return r.code == 0


def remove(runtime: RuntimeInfo, name: str, *, timeout_s: float = 30.0) -> bool:
    """Kill and remove the container; True when it is gone (or never existed)."""
    exe = runtime.path or runtime.name
    # podman would first wait out the stop timeout; docker's rm --force kills at once
    now = ["--time=0"] if runtime.name == "podman" else []
    r = _run([exe, "rm", "--force", *now, name], timeout_s=timeout_s, env=runtime_env(runtime))
    return r.code == 0 or "no such container" in r.err.lower()


def list_agent_containers(
    runtime: RuntimeInfo, agent_key: str, *, timeout_s: float = 15.0
) -> list[str]:
    """Names of every container (running or not) labelled as this agent's."""
    exe = runtime.path or runtime.name
    argv = [
        exe,
        "ps",
        "--all",
        f"--filter=label={LABEL_AGENT}={agent_key}",
        "--format={{.Names}}",
    ]
    r = _run(argv, timeout_s=timeout_s, env=runtime_env(runtime))
    if r.code != 0:
        raise RuntimeError(f"{runtime.name} ps failed: {_first_error(r)}")
    return [line.strip() for line in r.out.splitlines() if line.strip()]


def cleanup_leftovers(
    runtime: RuntimeInfo, agent_key: str, *, timeout_s: float = 30.0
) -> list[str]:
    """Remove containers a previous run of this agent left behind; returns their names."""
    removed = []
    for name in list_agent_containers(runtime, agent_key, timeout_s=timeout_s):
        if remove(runtime, name, timeout_s=timeout_s):
            removed.append(name)
    return removed
