from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet.agent.gpus.simulated import SimulatedBackend
from gpunet.core.energy import Sample, Site, default_site, footprint, measure, site_from_labels


def test_counter_delta() -> None:
    m = measure([Sample(0, 1000, 300), Sample(5, 2500, 300), Sample(10, 4000, 300)])
    assert m.joules == 3000 and m.method == "counter" and m.resets == 0
    assert m.to_dict()["counter_start_j"] == 1000 and m.to_dict()["counter_end_j"] == 4000


def test_integrated_power_when_there_is_no_counter() -> None:
    m = measure([Sample(0, None, 100), Sample(2, None, 300), Sample(3, None, None)])
    # trapezoids: 2 s x (100+300)/2 + 1 s x 300 (the one known power)
    assert m.joules == 700 and m.method == "integrated"


def test_a_counter_reset_integrates_that_segment_and_counts_it() -> None:
    m = measure(
        [Sample(0, 5000, 200), Sample(1, 5200, 200), Sample(2, 10, 200), Sample(3, 210, 200)]
    )
    assert m.joules == 200 + 200 + 200 and m.resets == 1 and m.method == "mixed"


def test_out_of_order_samples_are_ignored() -> None:
    m = measure([Sample(5, 100, 1), Sample(4, 50, 1), Sample(6, 130, 1)])
    assert m.joules == 30


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=20))
def test_a_monotonic_counter_gives_exactly_its_delta(steps: list[float]) -> None:
    counters = [1e6]
    for d in steps:
        counters.append(counters[-1] + d)
    m = measure([Sample(float(i), c, 250.0) for i, c in enumerate(counters)])
    assert m.joules == pytest.approx(counters[-1] - counters[0])


def test_footprint_hand_computed() -> None:
    site = Site(pue=1.5, grid_gco2e_per_kwh=400.0, tariff_per_kwh=0.10, sources=())
    f = footprint(7.2e6, site)  # 2 kWh at the GPU
    assert f["gpu_kwh"] == 2.0 and f["facility_kwh"] == 3.0
    assert f["co2e_kg"] == 1.2 and f["cost"] == pytest.approx(0.3)


def test_site_defaults_and_labels() -> None:
    d = default_site()
    assert (d.pue, d.grid_gco2e_per_kwh, d.tariff_per_kwh) == (1.58, 475.0, 0.1175)
    fr = site_from_labels({"country": "fra", "pue": "1.2"})
    assert fr.pue == 1.2 and fr.grid_gco2e_per_kwh == pytest.approx(56.039)
    assert "FRA" in fr.sources[1]


def test_simulated_gpus_have_a_counter_that_integrates_their_power(tmp_path: Path) -> None:
    b = SimulatedBackend(["A100-80GB"], faults=tmp_path / "faults.yaml")
    first = b.telemetry({0})[0]
    second = b.telemetry({0})[0]
    assert first.energy_j is not None and second.energy_j is not None
    assert second.energy_j >= first.energy_j
    (tmp_path / "faults.yaml").write_text("gpus:\n  0: {no_energy_counter: true}\n")
    assert b.telemetry({0})[0].energy_j is None
