"""The modelled throughputs: monotone in the specs, between the two spec ratios, and never
touching what was measured (so runs on Gavel's K80/P100/V100 fleets are unchanged)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpunet.catalog import catalog
from gpunet.cli.sim import app
from gpunet.core.throughput_model import (
    GpuPerf,
    Precision,
    complete_table,
    reference_class,
    reference_model,
    speedup,
)
from gpunet.sim import load_throughputs, parse_fleet
from gpunet.sim.gpu_perf import gpu_perf
from gpunet.sim.table import table_for

ALL = ",".join(f"1x{m}" for m in catalog())
REF = GpuPerf("ref", fp32_tflops=10.0, tensor16_tflops=100.0, bandwidth_gbps=1000.0)


def test_every_catalog_gpu_has_rates() -> None:
    perf = gpu_perf()
    assert set(perf) == set(catalog())
    for p in perf.values():
        assert p.fp32_tflops > 0 and p.tensor16_tflops > 0 and p.bandwidth_gbps > 0
    # measured matmuls are used where they exist (A100 SXM4: 271.2 of 312 rated bf16 TFLOPS)
    assert perf["A100-80GB"].tensor16_measured and perf["A100-80GB"].tensor16_tflops == 271.2
    assert not perf["L4"].tensor16_measured


@pytest.mark.parametrize("precision", list(Precision))
def test_speedup_rises_with_compute_and_bandwidth_and_stays_between_the_ratios(
    precision: Precision,
) -> None:
    last = 0.0
    for f in (0.5, 1.0, 2.0, 4.0):
        target = replace(
            REF, fp32_tflops=10.0 * f, tensor16_tflops=100.0 * f, bandwidth_gbps=1000.0
        )
        s = speedup(REF, target, precision)
        assert s > last and min(f, 1.0) <= s <= max(f, 1.0)
        last = s
    last = 0.0
    for f in (0.5, 1.0, 3.0):
        s = speedup(REF, replace(REF, bandwidth_gbps=1000.0 * f), precision)
        assert s > last and min(f, 1.0) <= s <= max(f, 1.0)
        last = s
    assert speedup(REF, REF, precision) == pytest.approx(1.0)


def test_a_faster_gpu_by_spec_never_gets_a_lower_modelled_throughput() -> None:
    perf = gpu_perf()
    fleet = parse_fleet(ALL)
    classes = [*load_throughputs(), reference_class("A100-80GB"), reference_class("L4") + " x2"]
    done = table_for(load_throughputs(), fleet, classes)
    modelled = set(done.modelled)
    checked = 0
    for a, b in itertools.permutations(perf.values(), 2):
        if not (
            a.fp32_tflops >= b.fp32_tflops
            and a.tensor16_tflops >= b.tensor16_tflops
            and a.bandwidth_gbps >= b.bandwidth_gbps
        ):
            continue
        for cls in classes:
            if (cls, a.model) in modelled and (cls, b.model) in modelled:
                assert done.table[cls][a.model] >= done.table[cls][b.model], (cls, a, b)
                checked += 1
    assert checked > 1000


def test_measured_entries_are_never_changed_nor_filled_in() -> None:
    measured = load_throughputs()
    done = table_for(measured, parse_fleet(ALL))
    for cls, row in measured.items():
        for m, v in row.items():
            assert done.table[cls][m] == v
        # a model Gavel measured is never modelled: a gap there means the class did not run
        for m in ("K80", "P100", "V100"):
            assert (m in done.table[cls]) == (m in row)
    assert {m for _, m in done.modelled}.isdisjoint({"K80", "P100", "V100"})
    # a class Gavel measured on V100 is modelled from its V100 figure
    cls = "Transformer (batch size 32)"
    h100 = speedup(gpu_perf()["V100"], gpu_perf()["H100-80GB"], Precision.FP32)
    assert done.table[cls]["H100-80GB"] == pytest.approx(measured[cls]["V100"] * h100)


def test_on_gavels_own_fleet_nothing_is_modelled() -> None:
    measured = load_throughputs()
    done = table_for(measured, parse_fleet("12xV100,12xP100,12xK80"))
    assert done.modelled == () and done.table == measured


def test_seconds_on_a_model_is_one_unit_per_second_there() -> None:
    cls = reference_class("A100-80GB") + " x4"
    assert reference_model(cls) == "A100-80GB" and reference_model("ResNet-50") is None
    perf = gpu_perf()
    done = complete_table({}, [cls, "unknown class"], ["A100-80GB", "H100-80GB"], perf)
    assert done.table[cls]["A100-80GB"] == 1.0
    h = speedup(perf["A100-80GB"], perf["H100-80GB"], Precision.TENSOR16)
    assert done.table[cls]["H100-80GB"] == pytest.approx(h) and h > 1
    assert "unknown class" not in done.table  # unknown classes stay unknown
    assert done.modelled == ((cls, "H100-80GB"),)


def test_generate_then_run_on_a_modern_fleet(tmp_path: Path) -> None:
    runner = CliRunner()
    trace = tmp_path / "g.jsonl"
    res = runner.invoke(app, ["generate", "--jobs", "20", "--rate", "4", "--out", str(trace)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["run", "--trace", str(trace), "--fleet", "2xA100-80GB,1xRTX-4090", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert "throughputs modelled from GPU specs" in res.stderr
    res = runner.invoke(
        app, ["throughputs", "--fleet", "1xV100,1xH100", "--trace", str(trace), "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["source"] for r in rows if r["model"] == "V100"} == {"measured"}
    assert {r["source"] for r in rows if r["model"] == "H100-80GB"} == {"modelled"}
