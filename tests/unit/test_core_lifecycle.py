from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.lifecycle import (
    GONE,
    OPERATOR_TARGETS,
    SCHEDULABLE,
    TRANSITIONS,
    GpuState,
    Tier,
    can_move,
    move,
    operator_move,
    parse_tier,
)
from gpunet.errors import Conflict, ValidationFailed

states = st.sampled_from(list(GpuState))
texts = st.text(min_size=1, max_size=30).filter(lambda t: t.strip())


@given(states, states, texts, texts)
def test_no_move_outside_the_table(src: GpuState, dst: GpuState, reason: str, actor: str) -> None:
    if dst in TRANSITIONS[src]:
        m = move(src, dst, reason, actor)
        assert (m.src, m.dst, m.reason, m.actor) == (src, dst, reason.strip(), actor)
    else:
        with pytest.raises(Conflict):
            move(src, dst, reason, actor)


@given(st.lists(states, max_size=30))
def test_any_walk_through_the_table_stays_in_it(targets: list[GpuState]) -> None:
    cur = GpuState.DISCOVERED
    for dst in targets:
        if can_move(cur, dst):
            cur = move(cur, dst, "why", "rule:test").dst
    assert cur in TRANSITIONS


def test_every_state_is_reachable_from_discovered_and_recycled_is_the_end() -> None:
    seen, todo = {GpuState.DISCOVERED}, [GpuState.DISCOVERED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(GpuState)
    assert TRANSITIONS[GpuState.RECYCLED] == frozenset()
    assert TRANSITIONS[GpuState.RETIRED] == {GpuState.RECYCLED}


def test_the_issue_path() -> None:
    path = [
        GpuState.DISCOVERED,
        GpuState.BURN_IN,
        GpuState.ACTIVE,
        GpuState.DEGRADED,
        GpuState.ACTIVE,
        GpuState.DRAINED,
        GpuState.MAINTENANCE,
        GpuState.ACTIVE,
        GpuState.DRAINED,
        GpuState.RETIRED,
        GpuState.RECYCLED,
    ]
    for a, b in zip(path, path[1:], strict=False):
        assert can_move(a, b), (a, b)


def test_schedulable_and_gone() -> None:
    assert {GpuState.ACTIVE, GpuState.DEGRADED} == SCHEDULABLE
    assert {GpuState.RETIRED, GpuState.RECYCLED} == GONE
    assert not SCHEDULABLE & GONE


def test_moves_need_reason_and_actor() -> None:
    with pytest.raises(ValidationFailed) as exc:
        move(GpuState.ACTIVE, GpuState.DRAINED, "  ", "operator:x")
    assert exc.value.field == "reason"
    with pytest.raises(ValidationFailed) as exc:
        move(GpuState.ACTIVE, GpuState.DRAINED, "why", "")
    assert exc.value.field == "actor"


def test_operator_actions() -> None:
    assert (
        operator_move(GpuState.ACTIVE, "drain", "fan noise", "operator:t").dst is GpuState.DRAINED
    )
    with pytest.raises(Conflict, match="active GPU cannot become retired"):
        operator_move(GpuState.ACTIVE, "retire", "old", "operator:t")
    with pytest.raises(ValidationFailed) as exc:
        operator_move(GpuState.ACTIVE, "explode", "x", "operator:t")
    assert exc.value.field == "action"
    assert set(OPERATOR_TARGETS) == {"drain", "activate", "maintain", "retire", "recycle"}


def test_tiers() -> None:
    assert parse_tier("inference") is Tier.INFERENCE
    with pytest.raises(ValidationFailed) as exc:
        parse_tier("gold")
    assert exc.value.field == "tier"
