"""Fair share memory: each account's recent GPU use with exponential decay.

A GPU-second used ``age`` seconds ago counts ``2 ** (-age / half_life)``, so yesterday's heavy
use fades instead of counting forever (or being forgotten at a window's edge). The live
coordinator fills ``Snapshot.account_usage`` with this; the policies read it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """``gpus`` GPUs held by ``account`` from ``start`` to ``end`` (seconds, one clock)."""

    account: str
    gpus: int
    start: float
    end: float


def decayed_gpu_seconds(spans: Iterable[Usage], now: float, half_life_s: float) -> dict[str, float]:
    """Account -> decayed GPU-seconds at ``now``: the integral of gpus x 2^(-(now - t)/h)."""
    if half_life_s <= 0:
        raise ValueError("half_life_s must be positive")
    k = math.log(2) / half_life_s
    out: dict[str, float] = defaultdict(float)
    for u in spans:
        end = min(u.end, now)
        if end <= u.start or u.gpus <= 0:
            continue
        # integral from start to end of exp(-k (now - t)) dt
        out[u.account] += u.gpus * (math.exp(-k * (now - end)) - math.exp(-k * (now - u.start))) / k
    return dict(out)
