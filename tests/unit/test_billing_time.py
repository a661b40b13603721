"""The bounds on billed seconds: the agent's measurement within the coordinator's view."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.billing_time import billable_seconds, interim_seconds
from gpunet.core.ledger import metered_seconds

secs = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(measured=secs, ceiling=secs, observed=secs, floor=st.integers(0, 10**6))
def test_the_bill_stays_within_the_bounds(
    measured: float, ceiling: float, observed: float, floor: int
) -> None:
    got = billable_seconds(measured, ceiling_s=ceiling, observed_s=observed, floor_s=floor)
    assert got >= floor  # never below what was already billed
    assert got <= max(floor, metered_seconds(ceiling))  # the agent cannot inflate it
    if floor <= metered_seconds(min(measured, ceiling)):
        assert got == metered_seconds(min(measured, ceiling))


@given(measured=secs, observed=secs, late=st.floats(min_value=0, max_value=1e5))
def test_a_late_report_bills_nothing_extra(measured: float, observed: float, late: float) -> None:
    """The coordinator's wall time grows while a report waits; the bill does not."""
    ceiling = measured + 0.4
    on_time = billable_seconds(measured, ceiling_s=ceiling, observed_s=observed)
    delayed = billable_seconds(measured, ceiling_s=ceiling + late, observed_s=observed + late)
    assert on_time == delayed == metered_seconds(measured)


def test_examples() -> None:
    # a coordinator restart held the report 40 s: billed what ran
    assert billable_seconds(4.4, ceiling_s=45.0, observed_s=44.0) == 4
    # an agent claiming more than the coordinator saw pass since assignment
    assert billable_seconds(1000.0, ceiling_s=12.0, observed_s=11.0) == 12
    # interim settlements already paid 30 s: the floor
    assert billable_seconds(10.0, ceiling_s=60.0, observed_s=59.0, floor_s=30) == 30
    # no measurement (an older agent): the coordinator's own running time, within the ceiling
    assert billable_seconds(None, ceiling_s=20.0, observed_s=19.6) == 20
    assert billable_seconds(None, ceiling_s=5.0, observed_s=19.6) == 5
    # nonsense from the wire never bills negative or infinite time
    assert billable_seconds(float("inf"), ceiling_s=5.0, observed_s=3.0) == 3
    assert billable_seconds(-4.0, ceiling_s=5.0, observed_s=3.0) == 0


@given(to_now=secs, to_seen=st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)))
def test_interim_bills_up_to_the_last_heartbeat_at_most(
    to_now: float, to_seen: float | None
) -> None:
    got = interim_seconds(to_now, to_seen)
    assert 0 <= got <= to_now
    if to_seen is not None:
        assert got <= max(0.0, to_seen)
