"""A service's replicas following the wanted count (core.serving.replicas)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.serving.replicas import (
    DRAIN_S,
    FAILURES_BEFORE_BACKOFF,
    FIRST_BACKOFF_S,
    ReplicaView,
    backoff_s,
    reconcile,
)


def rep(
    i: int, state: str = "running", ready: bool = True, started: float | None = 0.0
) -> ReplicaView:
    return ReplicaView(
        job_id=f"j{i}",
        state=state,
        created_at=float(i),
        started_at=started if state == "running" else None,
        ready=ready,
        ever_ready=ready,
    )


def test_adds_the_missing_replicas() -> None:
    p = reconcile([rep(1)], 3, 100.0, readiness_timeout_s=60)
    assert p.add == 2 and p.stop == ()
    assert p.reasons == ("add 2: 1 of 3 replica(s)",)


def test_stops_queued_then_unready_then_newest_ready() -> None:
    reps = [
        rep(1, started=10.0),
        rep(2, started=50.0),
        rep(3, ready=False, started=90.0),
        rep(4, state="queued"),
    ]
    p = reconcile(reps, 2, 100.0, readiness_timeout_s=60)
    assert [j for j, _ in p.stop] == ["j4", "j3"]
    p = reconcile(reps, 1, 100.0, readiness_timeout_s=60)
    assert [j for j, _ in p.stop] == ["j4", "j3", "j2"]  # the oldest ready replica stays
    assert p.add == 0


def test_a_replica_never_ready_past_its_timeout_is_replaced() -> None:
    stuck = ReplicaView("j1", "running", 0.0, started_at=0.0, ready=False, ever_ready=False)
    was_ready = ReplicaView("j2", "running", 0.0, started_at=0.0, ready=False, ever_ready=True)
    p = reconcile([stuck, was_ready], 2, 61.0, readiness_timeout_s=60)
    assert [j for j, _ in p.stop] == ["j1"]
    assert "not ready 61 s after it started (timeout 60 s)" in p.stop[0][1]
    assert p.add == 1  # its replacement, at once
    # within the timeout it is left to start
    assert reconcile([stuck], 1, 59.0, readiness_timeout_s=60).stop == ()


def test_crash_loop_backs_off() -> None:
    fails = [100.0, 101.0]
    assert backoff_s(fails, 102.0) == 0.0
    fails.append(102.0)
    assert backoff_s(fails, 102.0) == FIRST_BACKOFF_S
    p = reconcile([], 1, 105.0, readiness_timeout_s=60, failure_times=fails)
    assert p.add == 0 and p.wait_s == FIRST_BACKOFF_S - 3
    assert "3 failed within 300 s: next in 7 s" in p.reasons[0]
    assert reconcile([], 1, 112.5, readiness_timeout_s=60, failure_times=fails).add == 1
    fails.append(113.0)  # one more: the wait doubles
    assert backoff_s(fails, 113.0) == 2 * FIRST_BACKOFF_S
    # failures older than the window are forgotten
    assert backoff_s(fails, 113.0 + 301.0) == 0.0
    assert FAILURES_BEFORE_BACKOFF == 3


states = st.sampled_from(["queued", "assigned", "running"])


@given(
    st.lists(st.tuples(states, st.booleans()), max_size=12),
    st.integers(min_value=0, max_value=12),
)
def test_the_count_after_the_plan_is_the_wanted_one(raw: list[tuple[str, bool]], want: int) -> None:
    reps = [rep(i, state=s, ready=r) for i, (s, r) in enumerate(raw)]
    p = reconcile(reps, want, 10.0, readiness_timeout_s=60)
    stopped = {j for j, _ in p.stop}
    assert len(stopped) == len(p.stop)  # never the same replica twice
    assert len(reps) - len(stopped) + p.add == want
    assert p.add == 0 or not p.stop


def test_a_busy_replica_is_drained_before_it_is_stopped() -> None:
    busy = ReplicaView(
        "j1", "running", 0.0, started_at=50.0, ready=True, ever_ready=True, outstanding=2
    )
    idle = ReplicaView("j2", "running", 0.0, started_at=10.0, ready=True, ever_ready=True)
    p = reconcile([busy, idle], 1, 100.0, readiness_timeout_s=60)
    assert p.drain == ("j1",) and p.stop == ()  # the newest goes, but not while answering
    assert p.reasons == ("drain j1 (2 in flight): scaled to 1",)
    # still answering a little later: still draining, nothing said again
    later = replace(busy, draining_since=100.0)
    p = reconcile([later, idle], 1, 110.0, readiness_timeout_s=60)
    assert p.drain == ("j1",) and p.reasons == ()
    # its requests answered: stopped
    done = replace(later, outstanding=0)
    assert [j for j, _ in reconcile([done, idle], 1, 111.0, readiness_timeout_s=60).stop] == ["j1"]
    # answering for too long: stopped anyway
    p = reconcile([later, idle], 1, 100.0 + DRAIN_S, readiness_timeout_s=60)
    assert [j for j, _ in p.stop] == ["j1"] and p.drain == ()
    # wanted again: no longer drained
    assert reconcile([later, idle], 2, 105.0, readiness_timeout_s=60).drain == ()
