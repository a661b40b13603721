"""The planned power (core.power): it moves only when the draw moves materially."""

from __future__ import annotations

import pytest

from gpunet.core.power import SMOOTHING_S, planning_power, smoothed, step_w


def test_a_bucket_is_five_percent_of_the_tdp_and_at_least_ten_watts() -> None:
    assert step_w(700.0) == 35.0
    assert step_w(400.0) == 20.0
    assert step_w(150.0) == 10.0  # 7.5 W: too fine
    assert step_w(None) == 10.0


def test_the_first_draw_is_rounded_to_its_bucket() -> None:
    assert planning_power(None, 251.0, 400.0) == 260.0
    assert planning_power(None, 249.0, 400.0) == 240.0
    assert planning_power(None, 3.0, 400.0) == 20.0  # never planned as 0 W
    assert planning_power(None, None, 400.0) is None


@pytest.mark.parametrize("draw", [241.0, 250.0, 259.0, 278.9])
def test_a_draw_within_a_step_of_the_planned_power_leaves_it(draw: float) -> None:
    # (250 W hovers at the edge between the 240 W and 260 W buckets: no flip-flop)
    assert planning_power(260.0, draw, 400.0) == 260.0


def test_a_draw_a_step_away_moves_it_to_its_bucket() -> None:
    assert planning_power(260.0, 280.0, 400.0) == 280.0
    assert planning_power(260.0, 239.0, 400.0) == 240.0
    assert planning_power(60.0, 350.0, 400.0) == 360.0


def test_an_unknown_draw_keeps_the_planned_power() -> None:
    assert planning_power(260.0, None, 400.0) == 260.0


def test_the_smoothed_draw_follows_a_lasting_change_and_averages_jitter() -> None:
    assert smoothed(None, 300.0, 1.0) == 300.0
    assert smoothed(300.0, None, 1.0) == 300.0
    one = smoothed(100.0, 300.0, 1.0)
    assert one is not None and 100.0 < one < 130.0  # one second moves it a tenth of the way
    late = smoothed(100.0, 300.0, 5 * SMOOTHING_S)
    assert late is not None and late > 298.0
    # a draw alternating +-60 W each second stays within a few watts of its mean
    draw: float | None = 250.0
    for k in range(120):
        draw = smoothed(draw, 250.0 + (60.0 if k % 2 else -60.0), 1.0)
    assert draw is not None and abs(draw - 250.0) < 5.0
