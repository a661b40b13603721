"""Which replica takes a request: least outstanding requests, with optional affinity.

Without a key the request goes to the ready replica with the fewest outstanding requests;
ties are broken by a seeded hash, so a caller that passes a different seed per request
spreads ties evenly and the same seed always gives the same answer. With a key (a session id,
or a prompt's prefix: see :class:`AffinityRule`) the preferred replica is the key's highest
rendezvous-hash score among the eligible replicas, so a key keeps its replica while the set
is unchanged and only the keys won by a new replica move when one is added (about 1/N of
them). The preference is capped by load: when the preferred replica's outstanding count is
more than the eligible replicas' mean plus ``cap``, the request falls back to least
outstanding. Replicas not ready, draining, or already tried for this request are never
chosen. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_CAP = 2.0  # outstanding requests above the mean a preferred replica may carry


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica as the balancer sees it."""

    id: str
    outstanding: int = 0  # requests forwarded to it and not yet answered
    ready: bool = True  # passes its readiness probe
    draining: bool = False  # on its way out: finishes what it has, takes nothing new


@dataclass(frozen=True, slots=True)
class Choice:
    """The replica chosen for a request, and why."""

    replica: str
    reason: str
    affinity: bool  # whether the key's preferred replica was taken


@dataclass(frozen=True, slots=True)
class AffinityRule:
    """Where a request's affinity key comes from: a request header, whole (a session id)
    or its first ``prefix_chars`` characters (a prompt prefix, so requests that share it
    reach the replica that has it cached)."""

    header: str
    prefix_chars: int | None = None

    def key_of(self, headers: Mapping[str, str]) -> str | None:
        """The key of a request with ``headers`` (names compared case-insensitively);
        None when the header is missing or empty."""
        name = self.header.lower()
        value = next((v for k, v in headers.items() if k.lower() == name), "")
        if self.prefix_chars is not None:
            value = value[: self.prefix_chars]
        return value or None


def _score(*parts: str) -> int:
    """A stable 64-bit hash (Python's own ``hash`` of a str changes per process)."""
    h = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


def eligible(replicas: Sequence[Replica], exclude: Collection[str] = ()) -> list[Replica]:
    """The replicas a request may go to: ready, not draining, not in ``exclude``."""
    return [r for r in replicas if r.ready and not r.draining and r.id not in exclude]


def preferred(replicas: Sequence[Replica], key: str) -> Replica:
    """The rendezvous-hash winner for ``key`` among ``replicas`` (not empty)."""
    return max(replicas, key=lambda r: (_score(key, r.id), r.id))


def least_outstanding(replicas: Sequence[Replica], seed: int = 0) -> Replica:
    """The replica with the fewest outstanding requests; ties go to the best seeded hash."""
    return min(replicas, key=lambda r: (r.outstanding, -_score(str(seed), r.id), r.id))


def choose(
    replicas: Sequence[Replica],
    *,
    key: str | None = None,
    exclude: Collection[str] = (),
    cap: float = DEFAULT_CAP,
    seed: int = 0,
) -> Choice | None:
    """The replica for one request, or None when no replica may take it. A retry of a
    request that was not forwarded passes the replicas already tried as ``exclude``."""
    pool = eligible(replicas, exclude)
    if not pool:
        return None
    if key is not None:
        pick = preferred(pool, key)
        mean = sum(r.outstanding for r in pool) / len(pool)
        if pick.outstanding <= mean + cap:
            return Choice(pick.id, f"affinity: preferred {pick.id} ({pick.outstanding})", True)
        other = least_outstanding(pool, seed)
        return Choice(
            other.id,
            f"affinity: preferred {pick.id} is loaded ({pick.outstanding} > mean "
            f"{mean:.1f} + {cap:g}); least outstanding {other.id} ({other.outstanding})",
            False,
        )
    pick = least_outstanding(pool, seed)
    return Choice(pick.id, f"least outstanding: {pick.id} ({pick.outstanding})", False)
