"""The autoscaler on hand-computed sequences."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gpunet.core.serving.autoscale import (
    Decision,
    Sample,
    ScalerState,
    ScalingPolicy,
    decide,
    initial_state,
    observe,
    queue_admits,
    window_average,
)
from gpunet.errors import ValidationFailed

P = ScalingPolicy(target_inflight=3, min_replicas=1, max_replicas=10)


def feed(
    policy: ScalingPolicy, state: ScalerState, pairs: Sequence[tuple[float, int]]
) -> ScalerState:
    for t, n in pairs:
        state = observe(policy, state, Sample(t, n))
    return state


def test_stable_follows_the_minute_average() -> None:
    st = feed(P, initial_state(0, desired=2), [(t, 6) for t in range(1, 61)])
    d, st = decide(P, st, 60, ready=2)
    assert (d.desired, d.panic) == (2, False)
    assert d.reason == "stable: 6 in flight over 2 replicas, target 3 → 2"
    # 9 in flight over the last 30 s: the minute's average is 7.5 -> ceil(7.5 / 3) = 3
    st = feed(P, st, [(t, 9) for t in range(61, 91)])
    d, _ = decide(P, st, 90, ready=2)
    assert (d.stable_inflight, d.desired) == (7.5, 3)


def test_a_burst_panics_and_panic_never_scales_down() -> None:
    # 6 in flight for 54 s, then 14 for the last 6 s: the panic window's 14 is more than
    # 2 x (2 replicas x 3) = 12
    pairs = [(t, 6 if t <= 54 else 14) for t in range(1, 61)]
    st = feed(P, initial_state(0, desired=2), pairs)
    d, st = decide(P, st, 60, ready=2)
    assert (d.desired, d.panic) == (5, True)
    assert d.reason == "panic: 14 in flight over 2 replicas, target 3 → 5"
    # the burst ends; 10 s later the panic still holds the 5 replicas
    st = feed(P, st, [(t, 0) for t in range(61, 71)])
    d, st = decide(P, st, 70, ready=5)
    assert (d.desired, d.panic) == (5, True)
    # (the stable window still holds the burst: 350 request-seconds over 60 s asks for 2)
    assert d.reason == (
        "panic: 0 in flight over 5 replicas, target 3 → 0; stable window 5.8 in flight → 2; "
        "held in panic → 5"
    )
    # a whole stable window (60 s) under the threshold ends it; the minute's average is 0,
    # and scale-down is limited to halving: floor(5 / 2) = 2
    st = feed(P, st, [(t, 0) for t in range(71, 121)])
    d, st = decide(P, st, 120, ready=5)
    assert (d.desired, d.panic) == (2, False)
    assert d.reason == ("stable: 0 in flight over 5 replicas, target 3 → 0; scale-down rate 2× → 2")
    d, _ = decide(P, st, 121, ready=2)
    assert d.desired == 1
    assert d.reason.endswith("scale-down rate 2× → 1")


def test_bounds_come_last() -> None:
    policy = ScalingPolicy(target_inflight=3, min_replicas=1, max_replicas=4)
    st = feed(
        policy, initial_state(0, desired=2), [(t, 6 if t <= 54 else 14) for t in range(1, 61)]
    )
    d, _ = decide(policy, st, 60, ready=2)
    assert d.desired == 4
    assert d.reason.endswith("; max 4 → 4")
    policy = ScalingPolicy(target_inflight=3, min_replicas=3, max_replicas=4)
    d, _ = decide(policy, feed(policy, initial_state(0, 3), [(1, 0)]), 1, ready=3)
    assert d.desired == 3
    assert (
        d.reason
        == "stable: 0 in flight over 3 replicas, target 3 → 0; scale-down rate 2× → 1; min 3 → 3"
    )


def test_scale_to_zero_after_the_idle_time_and_back_at_the_first_request() -> None:
    policy = ScalingPolicy(target_inflight=3, min_replicas=0, max_replicas=10)
    st = feed(policy, initial_state(0, desired=1), [(10, 2)] + [(t, 0) for t in range(20, 320, 10)])
    d, st = decide(policy, st, 200, ready=1)
    assert d.desired == 1
    assert d.reason.endswith("idle 190 s of 300 s before zero → 1")
    d, st = decide(policy, st, 310, ready=1)
    assert (d.desired, d.reason) == (0, "idle for 300 s → 0")
    d, st = decide(policy, st, 500, ready=0)
    assert (d.desired, d.reason) == (0, "no request for 490 s, at zero → 0")
    # a request: 7 wait at the gateway -> ceil(7 / 3) = 3 replicas at once
    st = observe(policy, st, Sample(501, 7, arrived=7))
    d, st = decide(policy, st, 501.5, ready=0)
    assert (d.desired, d.panic) == (3, True)
    assert d.reason == "request at zero: 7 in flight, target 3 → 3"
    # while they start (none ready), the queued demand keeps the scaler in panic
    st = observe(policy, st, Sample(502, 7))
    d, st = decide(policy, st, 502, ready=0)
    assert (d.desired, d.panic) == (3, True)


def test_a_short_request_between_samples_counts_as_activity() -> None:
    policy = ScalingPolicy(target_inflight=1, min_replicas=0, max_replicas=2)
    st = feed(policy, initial_state(0, desired=0), [(1, 0)])
    d, st = decide(policy, st, 1, ready=0)
    assert d.desired == 0
    st = observe(policy, st, Sample(2, 0, arrived=1))
    d, st = decide(policy, st, 2, ready=0)
    assert d.desired == 1
    assert st.last_active_t == 2


def test_scale_down_delay_keeps_the_highest_recent_wish() -> None:
    policy = ScalingPolicy(
        target_inflight=1,
        max_replicas=20,
        scale_down_delay_s=30,
        stable_window_s=10,
        panic_window_s=1,
        max_scale_down_rate=100,
    )
    st = feed(policy, initial_state(0, desired=8), [(t, 8) for t in range(1, 11)])
    d, st = decide(policy, st, 10, ready=8)
    assert d.desired == 8
    st = feed(policy, st, [(t, 2) for t in range(11, 21)])
    d, st = decide(policy, st, 20, ready=8)
    assert d.desired == 8
    assert (
        d.reason == "stable: 2 in flight over 8 replicas, target 1 → 2; scale-down delay 30 s → 8"
    )
    st = feed(policy, st, [(t, 2) for t in range(21, 41)])
    d, _ = decide(policy, st, 40, ready=8)  # the wish of t=10 is 30 s old: gone
    assert d.desired == 2


def test_window_average_and_pruning() -> None:
    st = feed(P, initial_state(0), [(t, t) for t in range(1, 101)])
    assert [s.t for s in st.samples] == list(range(41, 101))  # inside (40, 100]
    assert window_average(st.samples, 100, 6) == pytest.approx(sum(range(95, 101)) / 6)
    assert window_average((), 100, 6) == 0.0
    with pytest.raises(ValueError):
        observe(P, st, Sample(99, 1))


def test_queue_is_bounded() -> None:
    policy = ScalingPolicy(queue_limit=2)
    assert [queue_admits(policy, q) for q in (0, 1, 2, 3)] == [True, True, False, False]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_inflight": 0}, "scaling.target_inflight"),
        ({"min_replicas": -1}, "replicas.min"),
        ({"min_replicas": 3, "max_replicas": 2}, "replicas.max"),
        ({"min_replicas": 0, "max_replicas": 0}, "replicas.max"),
        ({"panic_window_s": 61}, "scaling.panic_window_s"),
        ({"panic_threshold": 1}, "scaling.panic_threshold"),
        ({"max_scale_down_rate": 1}, "scaling.max_scale_down_rate"),
        ({"scale_to_zero_after_s": 5}, "scaling.scale_to_zero_after_s"),
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationFailed) as e:
        ScalingPolicy(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_decision_is_plain_data() -> None:
    d, _ = decide(P, initial_state(0, 1), 1, ready=1)
    assert isinstance(d, Decision) and d.t == 1
