"""The autoscaler of a service: how many replicas it wants, and why.

The model is Knative's (the one KServe uses) on in-flight requests, described in
docs/services.md. Two averages of the in-flight count are kept: over a long **stable window**
(60 s) and a short **panic window** (6 s). Normally the replica count follows the stable
average divided by ``target_inflight``. When the short-window demand is more than
``panic_threshold`` times the ready replicas' capacity, the scaler panics: it follows the panic
average, and it never scales down until demand has stayed under the threshold for a whole
stable window. Scale-down is rate-limited (and optionally delayed); ``min`` and ``max`` bound
every answer. With ``min == 0`` a service goes to zero only after ``scale_to_zero_after_s``
without any request, and comes back from zero at the first request.

Pure: no I/O and no clock. The caller feeds samples with :func:`observe` and asks with
:func:`decide`; both take a state and return a new one (states are immutable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gpunet.errors import ValidationFailed


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """The parameters of one service's autoscaler (defaults: Knative's, but the idle time)."""

    target_inflight: float = 1.0  # in-flight requests one replica should carry
    min_replicas: int = 1
    max_replicas: int = 10
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0  # panic when panic demand > this x ready capacity
    max_scale_up_rate: float = 1000.0  # at most ceil(rate x ready) per decision
    max_scale_down_rate: float = 2.0  # at least floor(ready / rate) per decision
    scale_down_delay_s: float = 0.0  # go down only to the highest wish of this long ago
    scale_to_zero_after_s: float = 300.0  # with min 0: no request for this long -> 0
    queue_limit: int = 100  # requests held while no replica is ready (more: refused)

    def __post_init__(self) -> None:
        def bad(field: str, reason: str) -> None:
            raise ValidationFailed(field, reason)

        if not self.target_inflight > 0:
            bad("scaling.target_inflight", "must be more than 0")
        if self.min_replicas < 0:
            bad("replicas.min", "must be 0 or more")
        if self.max_replicas < max(self.min_replicas, 1):
            bad("replicas.max", "must be at least 1 and at least replicas.min")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            bad("scaling.panic_window_s", "must be more than 0 and at most the stable window")
        if not self.panic_threshold > 1:
            bad("scaling.panic_threshold", "must be more than 1")
        if not self.max_scale_up_rate > 1:
            bad("scaling.max_scale_up_rate", "must be more than 1")
        if not self.max_scale_down_rate > 1:
            bad("scaling.max_scale_down_rate", "must be more than 1")
        if self.scale_down_delay_s < 0:
            bad("scaling.scale_down_delay_s", "must be 0 or more")
        if self.scale_to_zero_after_s < self.panic_window_s:
            # shorter, a service could go to zero while requests are still arriving
            bad("scaling.scale_to_zero_after_s", "must be at least the panic window")
        if self.queue_limit < 0:
            bad("scaling.queue_limit", "must be 0 or more")


@dataclass(frozen=True, slots=True)
class Sample:
    """At time ``t`` (seconds, any monotonic origin): ``inflight`` requests of the service
    were in flight (forwarded or queued at the gateway), and ``arrived`` requests came in
    since the previous sample (so a request shorter than the sampling period still counts as
    activity)."""

    t: float
    inflight: int
    arrived: int = 0

    @property
    def active(self) -> bool:
        return self.inflight > 0 or self.arrived > 0


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the autoscaler remembers between calls."""

    desired: int  # the last decision's count (the count the caller is reconciling to)
    last_active_t: float  # the last time a request was seen (or the state's start)
    samples: tuple[Sample, ...] = ()  # those still inside the stable window
    last_decision_t: float = -math.inf
    panic_since: float | None = None  # the last time demand was over the panic threshold
    panic_peak: int = 0  # the highest count wanted in this panic
    wishes: tuple[tuple[float, int], ...] = ()  # (t, count) inside the scale-down delay


def initial_state(now: float, desired: int = 0) -> ScalerState:
    """The state of a service created at ``now`` with ``desired`` replicas: its idle time
    counts from ``now``."""
    return ScalerState(desired=desired, last_active_t=now, last_decision_t=now)


@dataclass(frozen=True, slots=True)
class Decision:
    """The replica count wanted at ``t``, with the reason in words."""

    t: float
    desired: int
    reason: str
    panic: bool
    stable_inflight: float  # the stable window's average in-flight count
    panic_inflight: float  # the panic window's


def observe(policy: ScalingPolicy, state: ScalerState, sample: Sample) -> ScalerState:
    """The state with ``sample`` added; samples older than the stable window are dropped.
    Samples come in time order."""
    if state.samples and sample.t < state.samples[-1].t:
        raise ValueError(f"sample at {sample.t} is older than the last one")
    if sample.inflight < 0 or sample.arrived < 0:
        raise ValueError("in-flight and arrived counts are 0 or more")
    horizon = sample.t - policy.stable_window_s
    kept = tuple(s for s in state.samples if s.t > horizon) + (sample,)
    last = max(state.last_active_t, sample.t) if sample.active else state.last_active_t
    return replace(state, samples=kept, last_active_t=last)


def window_average(samples: tuple[Sample, ...], now: float, window_s: float) -> float:
    """The mean in-flight count of the samples in ``(now - window_s, now]`` (0 with none:
    the gateway sends a sample every period, zeros included)."""
    inside = [s.inflight for s in samples if now - window_s < s.t <= now]
    return sum(inside) / len(inside) if inside else 0.0


def queue_admits(policy: ScalingPolicy, queued: int) -> bool:
    """Whether one more request may wait while no replica is ready (``queued`` wait now)."""
    return queued < policy.queue_limit


def _n(x: float) -> str:
    """A count for a reason: ``14``, ``2.5``."""
    return f"{x:.1f}".removesuffix(".0")


def _plural(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def decide(
    policy: ScalingPolicy, state: ScalerState, now: float, ready: int
) -> tuple[Decision, ScalerState]:
    """The replica count to run at ``now``, given ``ready`` replicas serving, and the new
    state. Bounds come last: the answer is always within ``[min, max]``."""
    if ready < 0:
        raise ValueError("ready is 0 or more")
    target = policy.target_inflight
    stable = window_average(state.samples, now, policy.stable_window_s)
    panic_avg = window_average(state.samples, now, policy.panic_window_s)
    idle_s = now - state.last_active_t
    new = replace(state, last_decision_t=now)

    def done(
        desired: int, reason: str, panic: bool, st: ScalerState
    ) -> tuple[Decision, ScalerState]:
        bounded = min(max(desired, policy.min_replicas), policy.max_replicas)
        if bounded > desired:
            reason += f"; min {policy.min_replicas} → {bounded}"
        elif bounded < desired:
            reason += f"; max {policy.max_replicas} → {bounded}"
        d = Decision(now, bounded, reason, panic, stable, panic_avg)
        return d, replace(st, desired=bounded)

    # from zero: the first request starts replicas at once, with no averaging (it waits)
    if state.desired == 0:
        if state.last_active_t > state.last_decision_t:
            # the peak since the last decision (older samples may have left the window)
            peak = max(
                (s.inflight for s in state.samples if s.t > state.last_decision_t), default=0
            )
            want = max(1, math.ceil(peak / target))
            st = replace(new, panic_since=now, panic_peak=want, wishes=((now, want),))
            return done(
                want,
                f"request at zero: {_n(peak)} in flight, target {_n(target)} → {want}",
                True,
                st,
            )
        if ready == 0:
            return done(0, f"no request for {_n(idle_s)} s, at zero → 0", False, new)

    # idle long enough: to zero, past the rate limit (nothing has asked for a while)
    if policy.min_replicas == 0 and idle_s >= policy.scale_to_zero_after_s:
        st = replace(new, panic_since=None, panic_peak=0, wishes=())
        return done(0, f"idle for {_n(idle_s)} s → 0", False, st)

    base = max(ready, 1)  # rates and capacity of a service still starting count one replica
    up_limit = math.ceil(policy.max_scale_up_rate * base)
    down_limit = math.floor(ready / policy.max_scale_down_rate)

    def limited(want: int, note: list[str], down: bool = True) -> int:
        if want > up_limit:
            note.append(f"scale-up rate {_n(policy.max_scale_up_rate)}× → {up_limit}")
            return up_limit
        if down and want < down_limit:
            note.append(f"scale-down rate {_n(policy.max_scale_down_rate)}× → {down_limit}")
            return down_limit
        return want

    over = panic_avg > policy.panic_threshold * ready * target
    panic_since = now if over else state.panic_since
    if panic_since is not None and not over and now - panic_since >= policy.stable_window_s:
        panic_since = None  # a whole stable window under the threshold: panic ends
    notes: list[str] = []
    if panic_since is not None:
        raw = math.ceil(panic_avg / target)
        # the larger of the two windows: a burst that eased in the last seconds still counts
        # in the stable window, and more demand must never ask for fewer replicas
        steady = math.ceil(stable / target)
        if steady > raw:
            notes.append(f"stable window {_n(stable)} in flight → {steady}")
        want = limited(max(raw, steady), notes, down=False)  # the hold below covers scale-down
        # a panic never scales down: it starts from the count already wanted
        peak = max(state.panic_peak if state.panic_since is not None else state.desired, want)
        if peak > want:
            notes.append(f"held in panic → {peak}")
        reason = (
            f"panic: {_n(panic_avg)} in flight over {_plural(ready)}, target {_n(target)} → {raw}"
        )
        st = replace(new, panic_since=panic_since, panic_peak=peak, wishes=((now, peak),))
        return done(peak, "; ".join([reason, *notes]), True, st)

    raw = math.ceil(stable / target)
    want = limited(raw, notes)
    reason = f"stable: {_n(stable)} in flight over {_plural(ready)}, target {_n(target)} → {raw}"
    # the scale-down delay: go down only to the highest count wished within it
    wishes = tuple(w for w in state.wishes if now - w[0] < policy.scale_down_delay_s)
    wishes += ((now, want),)
    held = max(c for _, c in wishes)
    if held > want:
        notes.append(f"scale-down delay {_n(policy.scale_down_delay_s)} s → {held}")
        want = held
    # with min 0, the last replica stays until the service has been idle long enough
    if want == 0 and state.desired > 0 and policy.min_replicas == 0:
        notes.append(f"idle {_n(idle_s)} s of {_n(policy.scale_to_zero_after_s)} s before zero → 1")
        want = 1
    st = replace(new, panic_since=None, panic_peak=0, wishes=wishes)
    return done(want, "; ".join([reason, *notes]), False, st)
