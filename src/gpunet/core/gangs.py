"""Gangs (one job on several nodes): the rendezvous port rule and the members' environment.

Pure functions: the coordinator picks a gang's port with ``pick_port`` when it applies a
placement; the agent builds each member's variables with ``gang_env``.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

# The range a node offers when its agent declares none (torchrun's own default, 29500, first).
DEFAULT_PORTS = (29500, 29999)


def parse_ports(text: str | None) -> tuple[int, int]:
    """``"LOW-HIGH"`` (or one port) as a range; None or "" is the default. Raises ValueError."""
    if not text:
        return DEFAULT_PORTS
    low, sep, high = text.strip().partition("-")
    try:
        lo = int(low)
        hi = int(high) if sep else lo
    except ValueError:
        raise ValueError(f"{text!r}: expected LOW-HIGH, e.g. 29500-29999") from None
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError(f"{text!r}: ports must be 1024 <= LOW <= HIGH <= 65535")
    return lo, hi


def pick_port(
    ports: tuple[int, int], in_use: Collection[int], rng: random.Random | None = None
) -> int | None:
    """A port of ``ports`` no active gang uses on the node (None: all taken). Random rather
    than the lowest free one, so a gang re-placed after a port clash (another program holds
    the port on rank 0's host) most likely gets another."""
    lo, hi = ports
    free = hi - lo + 1 - sum(1 for p in set(in_use) if lo <= p <= hi)
    if free <= 0:
        return None
    r = rng or random
    for _ in range(64):
        p = r.randint(lo, hi)
        if p not in in_use:
            return p
    return next(p for p in range(lo, hi + 1) if p not in in_use)


def gang_env(
    *, rank: int, addrs: Sequence[str], master_port: int, gpus_per_node: int
) -> dict[str, str]:
    """What every member process sees, ready for ``torchrun``: rank 0's address and port, the
    node count, this node's rank, GPUs per node, the total GPU count and every member's
    address in rank order."""
    return {
        "MASTER_ADDR": addrs[0],
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(len(addrs) * gpus_per_node),
        "NNODES": str(len(addrs)),
        "NODE_RANK": str(rank),
        "GPUS_PER_NODE": str(gpus_per_node),
        "GPUNET_NODE_ADDRS": ",".join(addrs),
    }
