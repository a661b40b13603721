"""Simulated GPUs: the --simulate spec, the fleet file, and the backend itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.catalog import catalog
from gpunet.errors import ValidationFailed


def test_parse_simulate_list() -> None:
    assert parse_simulate("2xA100-80GB,1xRTX-4090") == ["A100-80GB", "A100-80GB", "RTX-4090"]


@pytest.mark.parametrize(
    ("spec", "models"),
    [
        ("A100-80GB", ["A100-80GB"]),
        ("3x4090", ["RTX-4090"] * 3),
        (" 2 x h100 , t4 ", ["H100-80GB", "H100-80GB", "T4"]),
        ("1XA100", ["A100-80GB"]),
        ("64xT4", ["T4"] * 64),
    ],
)
def test_parse_simulate_forms(spec: str, models: list[str]) -> None:
    assert parse_simulate(spec) == models


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ("2xZ9000", "simulate", "unknown GPU model"),
        ("0xA100", "simulate", "1..64"),
        ("65xA100", "simulate", "1..64"),
        ("2xA100,,1xT4", "simulate", "cannot read"),
        ("", "simulate", ""),
        ("2x", "simulate", ""),
        ("x*A100", "simulate", ""),
    ],
)
def test_parse_simulate_errors(spec: str, field: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_simulate(spec)
    assert exc.value.field == field
    assert words in exc.value.reason


def test_parse_simulate_fleet_file(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(
        "gpus:\n  - {model: A100-80GB, count: 2}\n  - model: rtx 4090\n"
        "  - {model: H100, count: 1}\n"
    )
    assert parse_simulate(str(f)) == ["A100-80GB", "A100-80GB", "RTX-4090", "H100-80GB"]
    # a file without a .yaml suffix is read too
    g = tmp_path / "fleet"
    g.write_text(f.read_text())
    assert parse_simulate(str(g)) == parse_simulate(str(f))


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("gpus: {model: A100}\n", "simulate", "list under 'gpus'"),
        ("nodes: []\n", "simulate", "list under 'gpus'"),
        ("- A100\n", "simulate", "list under 'gpus'"),
        ("", "simulate", "list under 'gpus'"),
        ("gpus: [{count: 2}]\n", "simulate.gpus[0]", "model"),
        ("gpus: [A100]\n", "simulate.gpus[0]", "model"),
        ("gpus: [{model: T4}, {model: T4, count: 0}]\n", "simulate.gpus[1].count", "positive"),
        ("gpus: [{model: T4, count: two}]\n", "simulate.gpus[0].count", "positive"),
        ("gpus: [{model: Z9000}]\n", "simulate.gpus[0].model", "unknown GPU model"),
        ("gpus: [unclosed\n", "simulate", "cannot read"),
    ],
)
def test_parse_simulate_fleet_file_errors(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(text)
    with pytest.raises(ValidationFailed) as exc:
        parse_simulate(str(f))
    assert exc.value.field == field, exc.value.message
    assert words in exc.value.reason


def test_missing_fleet_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_simulate(str(tmp_path / "nope.yaml"))
    assert exc.value.field == "simulate" and "cannot read fleet file" in exc.value.reason


def test_backend_discovers_simulated_gpus() -> None:
    b = SimulatedBackend(parse_simulate("2xA100-80GB,1xRTX-4090"), seed="node-1")
    gpus = b.discover()
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.model for g in gpus] == ["A100-80GB", "A100-80GB", "RTX-4090"]
    assert all(g.simulated for g in gpus) and b.simulated
    assert all("Simulated" in g.name for g in gpus)
    assert gpus[0].memory_mb == catalog()["A100-80GB"].memory_mb
    assert gpus[2].compute_capability == "8.9"
    assert len({g.uuid for g in gpus}) == 3
    # stable per seed, different across seeds
    assert [g.uuid for g in SimulatedBackend(b.models, seed="node-1").discover()] == [
        g.uuid for g in gpus
    ]
    assert gpus[0].uuid != SimulatedBackend(b.models, seed="node-2").discover()[0].uuid


def test_backend_telemetry_follows_busy() -> None:
    b = SimulatedBackend(["A100-80GB", "T4"])
    t = b.telemetry({0})
    assert [x.index for x in t] == [0, 1]
    assert t[0].utilization_pct and t[0].utilization_pct > 50
    assert t[1].utilization_pct == 0
    assert (t[0].power_w or 0) > (t[1].power_w or 0)
    assert (t[0].memory_used_mb or 0) > 0 and t[1].memory_used_mb == 0
    b.close()
