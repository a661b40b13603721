"""The GPU lifecycle state machine: the one table of allowed moves, and duty tiers.

discovered -> burn_in -> active (tier: training | inference | secondary) <-> degraded
-> drained -> maintenance -> active | retired -> recycled. Every move is an event with a
reason and an actor (a rule, or an operator's token).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gpunet.errors import Conflict, ValidationFailed


class GpuState(StrEnum):
    DISCOVERED = "discovered"
    BURN_IN = "burn_in"
    ACTIVE = "active"
    DEGRADED = "degraded"
    DRAINED = "drained"
    MAINTENANCE = "maintenance"
    RETIRED = "retired"
    RECYCLED = "recycled"


class Tier(StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"
    SECONDARY = "secondary"


S = GpuState
TRANSITIONS: dict[GpuState, frozenset[GpuState]] = {
    # discovered -> active: a coordinator that does not require burn-in (its setting says so)
    S.DISCOVERED: frozenset({S.BURN_IN, S.ACTIVE, S.DRAINED}),
    S.BURN_IN: frozenset({S.ACTIVE, S.DEGRADED, S.DRAINED}),
    S.ACTIVE: frozenset({S.DEGRADED, S.DRAINED}),
    S.DEGRADED: frozenset({S.ACTIVE, S.DRAINED}),
    S.DRAINED: frozenset({S.MAINTENANCE, S.ACTIVE, S.RETIRED}),
    S.MAINTENANCE: frozenset({S.ACTIVE, S.DRAINED, S.RETIRED}),
    S.RETIRED: frozenset({S.RECYCLED}),
    S.RECYCLED: frozenset(),
}

# states in which the scheduler may give the GPU new work
SCHEDULABLE = frozenset({S.ACTIVE, S.DEGRADED})
# states in which the GPU no longer counts as capacity of the fleet at all
GONE = frozenset({S.RETIRED, S.RECYCLED})

# what each operator command asks for
OPERATOR_TARGETS: dict[str, GpuState] = {
    "drain": S.DRAINED,
    "activate": S.ACTIVE,
    "maintain": S.MAINTENANCE,
    "retire": S.RETIRED,
    "recycle": S.RECYCLED,
}


@dataclass(frozen=True, slots=True)
class Move:
    """One lifecycle event: from, to, why and who."""

    src: GpuState | None
    dst: GpuState
    reason: str
    actor: str  # "rule:<name>" or "operator:<token id>"


def can_move(src: GpuState, dst: GpuState) -> bool:
    return dst in TRANSITIONS[src]


def move(src: GpuState, dst: GpuState, reason: str, actor: str) -> Move:
    """The event for ``src -> dst``; raises Conflict unless the table allows it, and
    ValidationFailed without a reason or actor."""
    if not reason.strip():
        raise ValidationFailed("reason", "every lifecycle move needs a reason")
    if not actor.strip():
        raise ValidationFailed("actor", "every lifecycle move needs an actor")
    if not can_move(src, dst):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[src])) or "nothing"
        raise Conflict(
            f"a {src.value} GPU cannot become {dst.value} (allowed: {allowed})", field="state"
        )
    return Move(src, dst, reason.strip(), actor)


def operator_move(src: GpuState, action: str, reason: str, actor: str) -> Move:
    """An operator command (drain, activate, maintain, retire, recycle) as a move."""
    dst = OPERATOR_TARGETS.get(action)
    if dst is None:
        raise ValidationFailed(
            "action", f"unknown action {action!r}; use one of {', '.join(OPERATOR_TARGETS)}"
        )
    return move(src, dst, reason, actor)


def parse_tier(value: str) -> Tier:
    try:
        return Tier(value)
    except ValueError:
        raise ValidationFailed(
            "tier", f"unknown tier {value!r}; use one of {', '.join(t.value for t in Tier)}"
        ) from None
