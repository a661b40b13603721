"""Energy of an attempt from GPU samples, and its facility energy, CO2e and cost.

A GPU's energy comes from NVML's total-energy counter where it has one (the delta between
samples); where the counter is missing it is integrated from power samples (trapezoids). A
counter that goes backwards was reset (driver reload): the segment across the reset is
integrated from power instead, and the reset is counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds, any monotonic clock
    counter_j: float | None  # total-energy counter, joules
    power_w: float | None


@dataclass(frozen=True, slots=True)
class Meter:
    joules: float = 0.0
    from_counter_j: float = 0.0
    integrated_j: float = 0.0
    resets: int = 0
    samples: int = 0
    first: Sample | None = None
    last: Sample | None = None

    @property
    def method(self) -> str:
        if self.integrated_j and self.from_counter_j:
            return "mixed"
        return "integrated" if self.integrated_j else "counter"

    @property
    def seconds(self) -> float:
        return (self.last.t - self.first.t) if self.first and self.last else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "joules": round(self.joules, 3),
            "method": self.method,
            "resets": self.resets,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "counter_start_j": self.first.counter_j if self.first else None,
            "counter_end_j": self.last.counter_j if self.last else None,
        }


def _power_j(a: Sample, b: Sample) -> float:
    dt = max(0.0, b.t - a.t)
    powers = [p for p in (a.power_w, b.power_w) if p is not None]
    return dt * sum(powers) / len(powers) if powers else 0.0


def step(m: Meter, s: Sample) -> Meter:
    """Add one sample."""
    if m.last is None:
        return replace(m, first=s, last=s, samples=1)
    prev = m.last
    if s.t < prev.t:
        return m  # out of order: ignore
    nxt = replace(m, last=s, samples=m.samples + 1)
    if s.counter_j is not None and prev.counter_j is not None:
        if s.counter_j >= prev.counter_j:
            d = s.counter_j - prev.counter_j
            return replace(nxt, joules=m.joules + d, from_counter_j=m.from_counter_j + d)
        d = _power_j(prev, s)  # the counter was reset: this segment from power
        return replace(
            nxt, joules=m.joules + d, integrated_j=m.integrated_j + d, resets=m.resets + 1
        )
    d = _power_j(prev, s)
    return replace(nxt, joules=m.joules + d, integrated_j=m.integrated_j + d)


def measure(samples: list[Sample]) -> Meter:
    m = Meter()
    for s in samples:
        m = step(m, s)
    return m


@dataclass(frozen=True, slots=True)
class Site:
    """Where the energy is used: facility overhead, grid carbon and tariff, with sources."""

    pue: float
    grid_gco2e_per_kwh: float
    tariff_per_kwh: float
    sources: tuple[str, ...]


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("gpunet.data").joinpath(f"gpus/{name}").read_text()
    return list(csv.DictReader(text.splitlines()))


@cache
def default_site() -> Site:
    """Defaults from the shipped data: the industry-average PUE (Uptime 2023), the world
    average grid intensity (IEA 2019, as used by codecarbon), and the midpoint of the US
    all-sector state-median electricity price range (USD)."""
    costs = {r["item"]: float(r["value"]) for r in _rows("depreciation_and_costs.csv")}
    by_source = {r["energy_source"]: r for r in _rows("carbon_intensity_by_source.csv")}
    tariff = (
        costs["electricity_price_all_sectors_state_median_low"]
        + costs["electricity_price_all_sectors_state_median_high"]
    ) / 2
    return Site(
        pue=costs["pue_default_industry_average"],
        grid_gco2e_per_kwh=float(by_source["world_average"]["gco2e_per_kwh"]),
        tariff_per_kwh=round(tariff, 4),
        sources=(
            "pue: pue_default_industry_average (depreciation_and_costs.csv)",
            "grid: world_average (carbon_intensity_by_source.csv)",
            "tariff: midpoint of electricity_price_all_sectors_state_median (USD/kWh)",
        ),
    )


@cache
def country_intensity() -> dict[str, float]:
    return {r["iso3"]: float(r["gco2e_per_kwh"]) for r in _rows("carbon_intensity_by_country.csv")}


def site_from_labels(labels: dict[str, Any]) -> Site:
    """A node's site: its labels ``pue``, ``grid_gco2e_per_kwh`` or ``country`` (ISO 3166
    alpha-3), ``tariff_per_kwh`` override the defaults."""
    base = default_site()
    pue, grid, tariff = base.pue, base.grid_gco2e_per_kwh, base.tariff_per_kwh
    sources = list(base.sources)
    if "pue" in labels:
        pue, sources[0] = float(labels["pue"]), "pue: node label"
    country = str(labels.get("country", "")).upper()
    if "grid_gco2e_per_kwh" in labels:
        grid, sources[1] = float(labels["grid_gco2e_per_kwh"]), "grid: node label"
    elif country in country_intensity():
        grid = country_intensity()[country]
        sources[1] = f"grid: {country} (carbon_intensity_by_country.csv)"
    if "tariff_per_kwh" in labels:
        tariff, sources[2] = float(labels["tariff_per_kwh"]), "tariff: node label"
    return Site(pue, grid, tariff, tuple(sources))


def gpu_kwh_price(site: Site) -> Decimal:
    """What one kilowatt-hour drawn by a GPU costs at ``site``: the tariff times the PUE (the
    facility's cooling and power overhead on top of the GPU's own draw). The one rule every
    energy cost uses: earnings, the suggested price's floor, job energy and the TCO report."""
    return Decimal(str(site.tariff_per_kwh)) * Decimal(str(site.pue))


def footprint(gpu_joules: float, site: Site) -> dict[str, Any]:
    """GPU energy -> facility energy (x PUE) -> CO2e and cost."""
    kwh = gpu_joules / J_PER_KWH
    facility = kwh * site.pue
    return {
        "gpu_kwh": round(kwh, 6),
        "facility_kwh": round(facility, 6),
        "co2e_kg": round(facility * site.grid_gco2e_per_kwh / 1000, 6),
        "cost": round(kwh * float(gpu_kwh_price(site)), 6),
        "pue": site.pue,
        "grid_gco2e_per_kwh": site.grid_gco2e_per_kwh,
        "tariff_per_kwh": site.tariff_per_kwh,
        "sources": list(site.sources),
    }
