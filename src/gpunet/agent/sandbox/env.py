"""A job's environment, built from scratch: never the agent's own variables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gpunet.core.checkpoints import SUBDIR as CHECKPOINT_SUBDIR

SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def python_bin_dir() -> str:
    """The agent's Python prefix bin (first on PATH so ``python3`` is the agent's Python)."""
    return str(Path(sys.prefix) / "bin")


def job_env(
    spec: dict[str, Any], gpu_indices: list[int], attempt: dict[str, Any], home: str
) -> dict[str, str]:
    """The spec's ``env``, then gpunet's job variables; ``home`` is the job's HOME and cwd."""
    env = {
        "PATH": ":".join((python_bin_dir(), *SYSTEM_PATH)),
        "HOME": home,
        "LANG": "C.UTF-8",
    }
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    # torchrun-ready: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NNODES, NODE_RANK, GPUS_PER_NODE,
    # GPUNET_NODE_ADDRS (core.gangs.gang_env; docs/distributed.md)
    env.update({str(k): str(v) for k, v in (attempt.get("gang_env") or {}).items()})
    # set last: a job cannot pretend to be another attempt or widen its GPUs
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices)
    env["GPUNET_JOB_ID"] = str(attempt["job_id"])
    env["GPUNET_ATTEMPT_ID"] = str(attempt["attempt_id"])
    env["GPUNET_ATTEMPT_NUMBER"] = str(attempt["number"])
    if attempt.get("array_index") is not None:  # a task of a job array (spec ``array: N``)
        env["GPUNET_ARRAY_ID"] = str(attempt.get("array_id") or "")
        env["GPUNET_ARRAY_INDEX"] = str(attempt["array_index"])
    # saved to the coordinator and restored into the next attempt (docs/checkpoints.md)
    env["GPUNET_CHECKPOINT_DIR"] = f"{home}/{CHECKPOINT_SUBDIR}"
    env["PYTHONUNBUFFERED"] = "1"
    if attempt.get("service_port"):  # a service replica: where the gateway reaches it
        env["PORT"] = str(attempt["service_port"])
    return env
