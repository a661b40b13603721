"""Jobs that name an ``image:`` run in a container of the owner's runtime (podman or docker).

The container layer (``container.py``) builds the command line; this module holds what one
agent gives every container: its runtime, its key (labels that find leftovers), the owner's
per-attempt limits and network choice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpunet.agent.sandbox import container
from gpunet.agent.sandbox.cgroups import Limits, agent_parent
from gpunet.agent.sandbox.env import SYSTEM_PATH
from gpunet.agent.sandbox.launch import effective_limits

log = logging.getLogger("gpunet.agent")


def agent_key(home: Path) -> str:
    """The label value of this agent's containers: stable across restarts on one home."""
    return agent_parent(home).name


@dataclass
class ContainerHost:
    """This agent's container runtime and the owner's settings for every container."""

    runtime: container.RuntimeInfo
    key: str
    limits: Limits = field(default_factory=lambda: Limits(pids=4096))
    network: str = "none"  # private | none
    cdi: bool = False
    host: container.HostLimits = field(default_factory=container.read_host_limits)

    def job(
        self,
        spec: dict[str, Any],
        command: list[str],
        workdir: Path,
        gpu_indices: list[int],
        env: dict[str, str],
        attempt_id: str,
    ) -> container.ContainerJob:
        limits = effective_limits(self.limits, spec)
        # simulated GPUs have no device nodes to hand over (real ones always do)
        real = self.cdi or all(os.path.exists(f"/dev/nvidia{i}") for i in gpu_indices)
        # the image brings its own programs: the agent's Python prefix means nothing inside
        env = {**env, "PATH": ":".join(SYSTEM_PATH)}
        return container.ContainerJob(
            attempt_id=attempt_id,
            agent_key=self.key,
            image=str(spec["image"]),
            command=command,
            workdir=workdir,
            env=env,
            gpus=list(gpu_indices) if real else [],
            pids_limit=limits.pids or 4096,
            memory_bytes=limits.memory_bytes,
            cpus=limits.cpus,
            network=self.network,
        )

    def argv(self, job: container.ContainerJob) -> list[str]:
        return container.build_run_argv(self.runtime, job, host=self.host, cdi=self.cdi)

    def env(self) -> dict[str, str]:
        return container.runtime_env(self.runtime)

    def stop(self, attempt_id: str, signal: str = "TERM") -> None:
        container.kill(self.runtime, container.container_name(attempt_id), signal=signal)

    def remove(self, attempt_id: str) -> None:
        container.remove(self.runtime, container.container_name(attempt_id))

    def reap_leftovers(self) -> list[str]:
        """Remove containers an earlier run of this agent left (after kill -9)."""
        try:
            return container.cleanup_leftovers(self.runtime, self.key)
        except RuntimeError as exc:
            log.warning("could not list leftover containers: %s", exc)
            return []


def find(home: Path, limits: Limits, *, network: str) -> tuple[ContainerHost | None, str]:
    """Probe podman, then docker; the host for image jobs (or None) and a line saying why."""
    runtimes = container.detect_runtimes(timeout_s=20)
    rt = container.first_working(runtimes)
    if rt is None:
        why = "; ".join(f"{r.name}: {r.reason}" for r in runtimes)
        return None, f"containers: none ({why})"
    line = f"containers: {rt.name} {rt.version or ''}".rstrip()
    if rt.oci_runtime:
        line += f" (OCI runtime {rt.oci_runtime})"
    if rt.warnings:
        line += "; WARNING: " + "; ".join(rt.warnings)
    host = ContainerHost(
        rt, agent_key(home), limits, network=network, cdi=container.cdi_available(rt)
    )
    return host, line
