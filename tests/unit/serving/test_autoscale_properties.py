"""Properties of the autoscaler over random policies and random traffic."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpunet.core.serving.autoscale import Sample, ScalingPolicy, decide, initial_state, observe


@st.composite
def policies(draw: st.DrawFn) -> ScalingPolicy:
    lo = draw(st.integers(0, 3))
    stable = draw(st.sampled_from((10.0, 30.0, 60.0)))
    panic = draw(st.sampled_from((1.0, 3.0, 6.0)))
    return ScalingPolicy(
        target_inflight=draw(st.sampled_from((0.5, 1.0, 3.0, 10.0))),
        min_replicas=lo,
        max_replicas=draw(st.integers(max(lo, 1), 12)),
        stable_window_s=stable,
        panic_window_s=panic,
        panic_threshold=draw(st.sampled_from((1.5, 2.0, 4.0))),
        max_scale_up_rate=draw(st.sampled_from((2.0, 1000.0))),
        max_scale_down_rate=draw(st.sampled_from((1.5, 2.0, 10.0))),
        scale_down_delay_s=draw(st.sampled_from((0.0, 5.0, 30.0))),
        scale_to_zero_after_s=draw(st.sampled_from((panic, 20.0, 60.0))),
    )


# one step: time passes, a sample arrives, and maybe a decision is taken with some replicas
# ready (the previous decision's count, or a lagging or failing count)
steps = st.lists(
    st.tuples(
        st.sampled_from((0.1, 0.5, 1.0, 2.0, 7.0, 30.0, 100.0)),
        st.sampled_from((0, 0, 0, 1, 2, 5, 20, 60)),
        st.sampled_from((0, 0, 1, 3)),
        st.booleans(),  # decide after this sample
        st.sampled_from(("follow", "follow", "lag", "zero")),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(policies(), steps)
def test_decisions_keep_their_promises(
    policy: ScalingPolicy, trace: list[tuple[float, int, int, bool, str]]
) -> None:
    t = 0.0
    state = initial_state(t, desired=policy.min_replicas)
    last_active = t  # kept here, apart from the scaler's own record
    last_decision = -math.inf
    active_since_decision = False
    ready = policy.min_replicas
    for dt, inflight, arrived, decide_now, readiness in trace:
        t += dt
        state = observe(policy, state, Sample(t, inflight, arrived))
        if inflight or arrived:
            last_active = t
            active_since_decision = True
        if not decide_now:
            continue
        before = state
        ready = {"follow": before.desired, "lag": min(ready, before.desired), "zero": 0}[readiness]
        d, state = decide(policy, before, t, ready)

        assert policy.min_replicas <= d.desired <= policy.max_replicas
        assert state.desired == d.desired
        # the reason ends with the count it explains
        assert d.reason.endswith(f"→ {d.desired}"), d.reason
        # a panic never scales down
        if d.panic:
            assert d.desired >= before.desired, d.reason
        # zero only with min 0, and only after the idle time (or when already at zero with
        # nothing asked since)
        if d.desired == 0:
            assert policy.min_replicas == 0
            idle = t - last_active >= policy.scale_to_zero_after_s
            assert idle or (before.desired == 0 and not active_since_decision), d.reason
        # from zero at once: a request seen at zero starts a replica
        if before.desired == 0 and active_since_decision:
            assert d.desired >= 1
        # scale-down is rate-limited, except to zero after the idle time and in panic holds
        if 0 < d.desired < before.desired:
            floor = math.floor(ready / policy.max_scale_down_rate)
            assert d.desired >= min(floor, policy.max_replicas), d.reason
        last_decision = t
        active_since_decision = False
    assert last_decision <= t


@settings(max_examples=150, deadline=None)
@given(policies(), st.lists(st.integers(0, 40), min_size=1, max_size=30), st.integers(1, 12))
def test_more_demand_never_asks_for_fewer_replicas(
    policy: ScalingPolicy, counts: list[int], ready: int
) -> None:
    """For the same history, a window with more requests in flight at every sample never
    gets a smaller count."""

    def run(extra: int) -> int:
        s = initial_state(0, desired=ready)
        for i, n in enumerate(counts, start=1):
            s = observe(policy, s, Sample(float(i), n + extra))
        return decide(policy, s, float(len(counts)), ready)[0].desired

    assert run(5) >= run(0)
