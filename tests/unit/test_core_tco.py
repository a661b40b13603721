from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet.core.tco import TcoInput, defaults, fleet_totals, market_rent, tco


def _in(**kw: object) -> TcoInput:
    base: dict[str, object] = dict(
        gpu_id="g",
        model="A100-80GB",
        purchase_price=15_000.0,
        age_years=1.0,
        depreciation_years=5.0,
        power_kw=0.3,
        rated_kw=0.4,
        pue=1.5,
        tariff_per_kwh=0.10,
        space_per_kw_month=219.0,
        utilization=0.6,
        rent_per_hour=1.20,
    )
    base.update(kw)
    return TcoInput(**base)  # type: ignore[arg-type]


def test_hand_computed_case() -> None:
    t = tco(_in())
    # capital 15000 / (5 x 8760) = 0.342466; energy 0.3 x 1.5 x 0.10 = 0.045;
    # space 0.4 x 219 / 730 = 0.12; total 0.507466; per useful hour / 0.6 = 0.845776
    assert t.capital_per_hour == pytest.approx(0.342466, abs=1e-6)
    assert t.energy_per_hour == pytest.approx(0.045)
    assert t.space_per_hour == pytest.approx(0.12)
    assert t.cost_per_hour == pytest.approx(0.507466, abs=1e-6)
    assert t.cost_per_useful_hour == pytest.approx(0.845776, abs=1e-6)
    assert t.recommendation == "keep"
    assert t.arithmetic[0] == "capital: 15000 / (5 y x 8760 h) = 0.3425/h"
    assert t.arithmetic[-1] == "per useful GPU-hour: 0.5075 / 60% utilization = 0.8458"


def test_recommendations() -> None:
    assert tco(_in(rent_per_hour=0.1)).recommendation == "retire"  # 0.165/h to run
    assert tco(_in(utilization=0.2, rent_per_hour=1.0)).recommendation == "move tier"
    assert tco(_in(utilization=0.9, rent_per_hour=0.5)).recommendation == "sell"
    assert tco(_in(rent_per_hour=None)).recommendation == "keep"
    written_off = tco(_in(age_years=6.0))
    assert written_off.capital_per_hour == 0 and "written off" in written_off.arithmetic[0]
    assert tco(_in(utilization=0.0)).cost_per_useful_hour is None


@given(
    st.floats(0, 1),
    st.none() | st.floats(0.01, 20),
    st.none() | st.floats(100, 50_000),
    st.floats(0, 1.5),
)
def test_every_recommendation_carries_reasons(
    util: float, rent: float | None, price: float | None, kw: float
) -> None:
    t = tco(_in(utilization=util, rent_per_hour=rent, purchase_price=price, power_kw=kw))
    assert t.recommendation in ("keep", "move tier", "sell", "retire")
    assert t.reasons and all(r.strip() for r in t.reasons) and len(t.arithmetic) == 5
    assert t.cost_per_hour == pytest.approx(
        t.capital_per_hour + t.energy_per_hour + t.space_per_hour
    )


def test_defaults_and_rent_from_the_data() -> None:
    d = defaults()
    assert d.depreciation_years == 5.25 and d.space_per_kw_month == 217.3
    assert market_rent("A100-80GB") == 2.79 and market_rent("T4") is None


def test_fleet_totals() -> None:
    a, b = tco(_in(gpu_id="a")), tco(_in(gpu_id="b", utilization=0.2, rent_per_hour=1.0))
    f = fleet_totals([a, b], [0.6, 0.2])
    assert f["cost_per_useful_hour"] == pytest.approx(
        (a.cost_per_hour + b.cost_per_hour) / 0.8, abs=1e-4
    )
    assert f["recommendations"] == {"keep": 1, "move tier": 1, "sell": 0, "retire": 0}
