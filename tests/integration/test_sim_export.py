"""``GET /v1/sim/export`` and ``gpunet sim export``: the network's finished jobs with known
timings become a trace that replays, on the same fleet, with the JCTs the network measured."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from helpers import auth, coordinator, gpu
from sqlalchemy import select
from typer.testing import CliRunner

from gpunet.cli import sim as sim_cli
from gpunet.sdk.client import Client
from gpunet.sim import SimConfig, load_throughputs, parse_fleet, read_trace, simulate
from gpunet.sim.export import from_export, write_csv
from gpunet.sim.table import table_for, trace_classes
from gpunet.store.tables import Attempt, Job
from gpunet.wire import resources as R

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KNOWN = "Transformer (batch size 32)"  # a class the table models on A100-80GB
# (submitted, started, finished) in seconds after T0: a FIFO schedule on 2 GPUs
TIMINGS = {
    "a": (0, 0, 3600),
    "b": (0, 0, 1800),
    "c": (100, 1800, 3000),
    "d": (200, 3000, 3600),
}
# The trace keeps submissions and running times, not the coordinator's scheduling tick nor
# the agents' start-up delays (seconds); replayed FIFO on the same GPUs, each JCT is within
# 10% of the measured one for jobs of ten minutes or more.
TOLERANCE = 1.10


def _at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_export_replays_the_networks_jobs(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        node = co.register(provider, [gpu(0), gpu(1)])
        user = co.token("consumer", "alice")
        ids = {}
        for name in TIMINGS:
            spec = {"name": name, "command": ["true"]}
            if name == "a":
                spec["job_class"] = KNOWN
            ids[name] = co.submit(user, spec)["id"]
        for _ in TIMINGS:
            att = co.next_start(node)
            assert co.report(node, att, "started").status_code == 200
            assert co.report(node, att, "finished", exit_code=0).status_code == 200
        queued = co.submit(user, {"name": "later", "command": ["true"]})  # not finished: left out
        # the known timings, written over the wall-clock ones the test run produced
        with co.db.sessions() as s:
            for name, (sub, start, end) in TIMINGS.items():
                job = s.get(Job, ids[name])
                assert job is not None and job.state == "succeeded"
                job.created_at, job.started_at, job.finished_at = _at(sub), _at(start), _at(end)
                for a in s.scalars(select(Attempt).where(Attempt.job_id == job.id)):
                    a.created_at, a.started_at, a.finished_at = _at(start), _at(start), _at(end)
            s.commit()

        assert co.c.get("/v1/sim/export", headers=auth(user)).status_code == 403
        r = co.c.get("/v1/sim/export", headers=auth(co.admin))
        assert r.status_code == 200, r.text
        body = r.json()
        doc = co.c.get("/openapi.json").json()
        schema = doc["paths"]["/v1/sim/export"]["get"]["responses"]["200"]["content"][
            "application/json"
        ]["schema"]
        jsonschema_rs.validator_for({**schema, "components": doc["components"]}).validate(body)
        assert body["fleet"] == [{"model": "A100-80GB", "count": 2}]
        got = {j["id"]: j for j in body["jobs"]}
        assert queued["id"] not in got and set(got) == set(ids.values())
        for name, (sub, start, end) in TIMINGS.items():
            j = got[ids[name]]
            assert j["arrival_s"] == sub and j["running_s"] == end - start
            assert j["jct_s"] == end - sub and j["gpu_model"] == "A100-80GB"
        assert got[ids["a"]]["job_class"] == KNOWN and got[ids["b"]]["job_class"] is None

        # the SDK reads the same answer as a model
        sdk = Client("http://testserver", co.admin)
        sdk._http.close()
        sdk._http = TestClient(co.c.app, headers=auth(co.admin))
        typed = sdk.sim_export()
        assert [j.id for j in typed.jobs] == [j["id"] for j in body["jobs"]]

        # the CLI writes the trace and prints the fleet
        monkeypatch.setattr(sim_cli, "Client", lambda: sdk)
        trace = tmp_path / "exported.csv"
        res = CliRunner().invoke(
            sim_cli.app,
            ["export", "--out", str(trace), "--fleet-out", str(tmp_path / "fleet.txt")],
        )
        assert res.exit_code == 0, res.output
        fleet = res.stdout.strip()
        assert fleet == "2xA100-80GB" == (tmp_path / "fleet.txt").read_text().strip()

    jobs = read_trace(trace)
    by_id = {j.id: j for j in jobs}
    assert by_id[ids["a"]].job_class == KNOWN
    assert by_id[ids["b"]].job_class == "seconds on A100-80GB"
    assert by_id[ids["b"]].total_steps == 1800 and by_id[ids["c"]].arrival_s == 100
    assert by_id[ids["b"]].account == got[ids["b"]]["account_id"]

    # replayed on the same fleet: the JCTs the network measured
    fl = parse_fleet(fleet)
    table = table_for(load_throughputs(), fl, trace_classes(jobs)).table
    out = simulate(jobs, fl, table, SimConfig(policy="fifo"))
    jct = {o.id: o.jct_s for o in out.outcomes}
    for name, (sub, _, end) in TIMINGS.items():
        real = end - sub
        assert real / TOLERANCE <= jct[ids[name]] <= real * TOLERANCE, (name, jct, real)

    # what if: four H100s more; through the CLI, as an operator asks it
    res = CliRunner().invoke(
        sim_cli.app,
        ["run", "--trace", str(trace), "--fleet", f"{fleet},4xH100-80GB", "--json"],
    )
    assert res.exit_code == 0, res.output
    more = json.loads(res.stdout)
    real_avg = sum(e - s for s, _, e in TIMINGS.values()) / len(TIMINGS)
    assert more["avg_jct_s"] < real_avg


def test_from_export_leaves_out_what_it_cannot_replay(tmp_path: Path) -> None:
    data = R.SimExport(
        fleet=[R.SimFleetEntry(model="A100-80GB", count=1), R.SimFleetEntry(model="X1", count=2)],
        jobs=[
            R.SimExportJob(
                id=i,
                account_id="acc",
                priority=0,
                state="succeeded",
                submitted_at="2026-01-05T09:00:00Z",
                arrival_s=0.0,
                gpu_count=1,
                job_class="my own class",  # unknown to the table: counted in seconds
                gpu_model=model,
                running_s=run,
                attempts=1,
                jct_s=10.0,
            )
            for i, model, run in (("ok", "A100-80GB", 10.0), ("odd", "X1", 5.0), ("zero", "L4", 0))
        ],
    )
    done = from_export(data, load_throughputs())
    assert done.fleet == "1xA100-80GB"
    assert [e.trace.id for e in done.jobs] == ["ok"]
    assert done.jobs[0].trace.job_class == "seconds on A100-80GB"
    assert len(done.skipped) == 3 and any("'X1'" in s for s in done.skipped)
    write_csv(done.jobs, tmp_path / "t.csv")
    assert [(j.id, j.total_steps) for j in read_trace(tmp_path / "t.csv")] == [("ok", 10.0)]
