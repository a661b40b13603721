"""Traces, fleets, throughput tables, generation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpunet.cli.sim import app
from gpunet.errors import ValidationFailed
from gpunet.sim import load_throughputs, parse_fleet, parse_trace, read_trace
from gpunet.sim.generate import generate
from gpunet.sim.traces import write_gavel_trace, write_jsonl

GAVEL_LINE = (
    "ResNet-18 (batch size 64)\tpython3 main.py\timage_classification/cifar10\t--num_steps"
    "\t1\t1646636\t1\t1\t-1.000000\t611.465182\n"
)


def test_reads_the_three_formats(tmp_path: Path) -> None:
    jobs = parse_trace(GAVEL_LINE, "t.trace")
    assert jobs[0].total_steps == 1646636 and jobs[0].arrival_s == pytest.approx(611.465182)
    csv_text = (
        "job_id,arrival_time_s,job_type,scale_factor,total_steps,priority_weight\n"
        "7,5.0,A3C,1,100,1.0\n"
    )
    assert parse_trace(csv_text, "t.csv")[0].id == "7"
    write_jsonl(jobs, tmp_path / "t.jsonl")
    again = read_trace(tmp_path / "t.jsonl")
    assert again == jobs
    write_gavel_trace(jobs, tmp_path / "t.trace")
    assert read_trace(tmp_path / "t.trace")[0].total_steps == jobs[0].total_steps


def test_unreadable_lines_are_named() -> None:
    with pytest.raises(ValidationFailed) as e:
        parse_trace(GAVEL_LINE + "only\tthree\tfields\n", "x.trace")
    assert e.value.field == "x.trace:2"
    with pytest.raises(ValidationFailed) as e:
        parse_trace(
            '{"arrival_s": 1, "job_class": "A3C", "total_steps": 5}\n{"arrival_s": 2}\n', "x.jsonl"
        )
    assert e.value.field == "x.jsonl:2" and "job_class" in e.value.reason
    with pytest.raises(ValidationFailed) as e:
        parse_trace(GAVEL_LINE.replace("611.465182", "soon"), "y.trace")
    assert e.value.field == "y.trace:1"


def test_fleet_specs() -> None:
    fleet = parse_fleet("12xv100,3xA100", gpus_per_node=8)
    assert len(fleet.gpus) == 15 and fleet.models == ["A100-80GB", "V100"]
    assert [n.id for n in fleet.nodes] == ["V100-1", "V100-2", "A100-80GB-1"]
    for bad in ("", "12V100", "0xV100", "3xV999"):
        with pytest.raises(ValidationFailed):
            parse_fleet(bad)


def test_bundled_throughputs() -> None:
    table = load_throughputs()
    assert table["A3C"]["V100"] > table["A3C"]["K80"]
    assert set(table["LM (batch size 10) x2"]) == {"V100", "P100", "K80"}
    assert len([k for k in table if " x" not in k]) == 26


@pytest.mark.parametrize("kind", ["gavel", "philly"])
def test_generate_is_deterministic(kind: str) -> None:
    table = load_throughputs()
    a = generate(kind, 200, 2.0, table, seed=3)
    assert a == generate(kind, 200, 2.0, table, seed=3)
    assert a != generate(kind, 200, 2.0, table, seed=4)
    assert all(j.total_steps and j.total_steps > 0 for j in a)
    gaps = [b.arrival_s - x.arrival_s for x, b in zip(a, a[1:], strict=False)]
    assert 3600 / 2.0 * 0.7 < sum(gaps) / len(gaps) < 3600 / 2.0 * 1.3
    if kind == "philly":
        assert {j.gpu_count for j in a} > {1}


def test_cli_run_json_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    trace = tmp_path / "g.jsonl"
    res = runner.invoke(app, ["generate", "--jobs", "30", "--rate", "4", "--out", str(trace)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "run",
            "--trace",
            str(trace),
            "--fleet",
            "2xV100,2xK80",
            "--json",
            "--window",
            "5:24",
            "--plot",
            str(tmp_path / "p.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    for key in (
        "avg_jct_s",
        "median_jct_s",
        "p99_jct_s",
        "makespan_s",
        "utilization",
        "preemptions",
        "jobs_measured",
        "decision_time_s",
    ):
        assert key in m
    assert m["jobs_measured"] == 20
    assert (tmp_path / "p.png").stat().st_size > 0
    res = runner.invoke(app, ["run", "--trace", str(trace), "--fleet", "2xV999"])
    assert res.exit_code == 2 and "unknown GPU model" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(
        app,
        [
            "compare",
            "--trace",
            str(trace),
            "--fleet",
            "2xV100",
            "--policies",
            "fifo,default",
            "--json",
        ],
    )
    assert res.exit_code == 0 and len(json.loads(res.stdout)) == 2
