"""/metrics, and the store's migrations."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import Coordinator, auth, coordinator, gpu, wait_for
from sqlalchemy import inspect, select

from gpunet.services.auth import bootstrap_admin
from gpunet.store.db import Database
from gpunet.store.tables import Base, Token
from tests.conftest import migrated, missing, pg_database


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


def _scrape_once_flushed(co: Coordinator, marker: str) -> str:
    """/metrics once the heartbeats' telemetry reached the store (it is flushed in batches)."""

    def flushed() -> str | None:
        text = co.c.get("/metrics").text
        return text if marker in text else None

    return wait_for(flushed, what="the telemetry flush")


def test_metrics_expose_jobs_gpus_heartbeats_and_scheduling(db_url: str) -> None:
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1), gpu(2)])
        user = co.token("consumer", "alice")
        running = co.submit(user, {"command": ["sleep", "60"], "resources": {"gpus": 2}})
        att = co.next_start(node)
        assert att["job_id"] == running["id"]
        assert co.report(node, att, "started").status_code == 200
        co.submit(user, {"command": ["true"], "resources": {"gpus": 2}})  # must wait: queued
        done = co.submit(user, {"command": ["true"], "resources": {"gpus": 1}})
        att2 = co.next_start(node)
        assert att2["job_id"] == done["id"]
        assert co.report(node, att2, "finished", exit_code=0).status_code == 200
        co.heartbeat(node)
        co.heartbeat(node)

        r = co.c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert _metric(text, "gpunet_jobs", 'state="running"') == 1
        assert _metric(text, "gpunet_jobs", 'state="queued"') == 1
        assert _metric(text, "gpunet_jobs", 'state="succeeded"') == 1
        assert _metric(text, "gpunet_jobs", 'state="failed"') == 0
        assert _metric(text, "gpunet_gpus", 'state="busy"') == 2
        assert _metric(text, "gpunet_gpus", 'state="idle"') == 1
        assert _metric(text, "gpunet_gpus", 'state="unhealthy"') == 0
        assert _metric(text, "gpunet_nodes", 'status="online"') == 1
        assert _metric(text, "gpunet_heartbeat_interval_seconds_count") >= 2
        lag = _metric(text, "gpunet_heartbeat_lag_max_seconds")
        assert 0 <= lag < 5
        assert _metric(text, "gpunet_scheduling_latency_seconds_count") == 2
        assert 0 <= _metric(text, "gpunet_scheduling_latency_seconds_sum") < 10
        assert _metric(text, "gpunet_scheduler_tick_seconds_count") >= 2

        # the gauges follow the store: cancel the running job
        assert co.c.post(f"/v1/jobs/{running['id']}/cancel", headers=auth(user)).status_code == 200
        text = co.c.get("/metrics").text
        assert _metric(text, "gpunet_jobs", 'state="running"') == 0
        assert _metric(text, "gpunet_jobs", 'state="cancelled"') == 1
        # its GPUs stay busy until the agent confirms the stop
        assert _metric(text, "gpunet_gpus", 'state="busy"') == 2
        assert co.report(node, att, "finished", exit_code=-15).status_code == 200
        # the queued job now gets the two freed GPUs
        wait_for(
            lambda: (
                _metric(co.c.get("/metrics").text, "gpunet_scheduling_latency_seconds_count") == 3
            ),
            what="the queued job to be placed",
        )


# what a schema is made of, beyond its tables: SQLite keeps each index's and trigger's DDL
# (a table's DDL lists constraints in no fixed order after Alembic rebuilt it); PostgreSQL is
# asked its catalog
SCHEMA_QUERIES = {
    "sqlite": ["SELECT type, name, tbl_name, sql FROM sqlite_master WHERE type != 'table'"],
    "postgresql": [
        "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = 'public'::regnamespace",
        "SELECT event_object_table, trigger_name, action_timing, event_manipulation,"
        " action_statement FROM information_schema.triggers",
        "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
        "SELECT sequence_name FROM information_schema.sequences",
    ],
}


def _schema(url: str) -> dict[str, Any]:
    """Every table's columns, keys, indexes and constraints, the store's other objects, and
    its Alembic revision, in a fixed order."""
    db = Database(url)
    try:
        insp = inspect(db.engine)
        out: dict[str, Any] = {}
        for t in sorted(insp.get_table_names()):
            out[t] = [
                [
                    (c["name"], str(c["type"]), c["nullable"], c["default"])
                    for c in insp.get_columns(t)
                ],
                insp.get_pk_constraint(t)["constrained_columns"],
                sorted(repr(sorted(x.items())) for x in insp.get_foreign_keys(t)),
                sorted(repr(sorted(x.items())) for x in insp.get_indexes(t)),
                sorted(repr(sorted(x.items())) for x in insp.get_unique_constraints(t)),
                sorted(repr(sorted(x.items())) for x in insp.get_check_constraints(t)),
            ]
        with db.engine.connect() as conn:
            for q in [*SCHEMA_QUERIES[conn.dialect.name], "SELECT * FROM alembic_version"]:
                out[q] = sorted(tuple(r) for r in conn.exec_driver_sql(q))
        return out
    finally:
        db.dispose()


def test_the_tests_migrated_store_is_what_the_migrations_make(db_url: str, tmp_path: Path) -> None:
    """The tests' fresh stores get the migrations' result made once per run (conftest's
    ``migrated``): it must be the very schema that running them on a fresh store makes."""
    migrated(db_url)
    if db_url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'other.db'}"
        Database(other).migrate()
        assert _schema(db_url) == _schema(other)
        return
    with pg_database() as other:
        db = Database(other)
        db.migrate()
        db.dispose()
        assert _schema(db_url) == _schema(other)


def test_migrations_apply_on_a_fresh_store_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        db.migrate()
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        assert "alembic_version" in tables
        admin = bootstrap_admin(db)
        assert admin is not None
        db.migrate()  # a second run changes nothing and loses nothing
        assert set(inspect(db.engine).get_table_names()) == tables
        with db.sessions() as s:
            assert len(list(s.scalars(select(Token)))) == 1
        assert bootstrap_admin(db) is None  # the admin survived
        with db.engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert len(versions) == 1
    finally:
        db.dispose()
    # a fresh process (a new engine) on the migrated store migrates again without trouble
    db2 = Database(db_url)
    try:
        db2.migrate()
        assert bootstrap_admin(db2) is None
    finally:
        db2.dispose()


def test_metrics_carry_each_gpus_readings_and_the_networks_totals(db_url: str) -> None:
    with coordinator(db_url) as co:
        provider = co.token("provider", "prov")
        node = co.register(provider, [gpu(0), gpu(1)])
        user = co.token("consumer", "alice")
        # one credit per GPU-second, and credits to pay for it
        r = co.c.put(
            "/v1/prices", json={"node_id": node.id, "price": "3600"}, headers=auth(provider)
        )
        assert r.status_code == 200, r.text
        r = co.c.post(
            "/v1/credits/grant",
            json={"account": "alice", "amount": "10000"},
            headers=auth(co.admin),
        )
        assert r.status_code == 201, r.text
        beat = {
            "attempts": [],
            "gpus": [
                {
                    "index": 0,
                    "utilization_pct": 87.5,
                    "memory_used_mb": 1024,
                    "power_w": 250.0,
                    "energy_j": 5000.0,
                },
                {"index": 1, "temperature_c": 41.0},
            ],
        }
        assert co.c.post("/v1/agent/heartbeat", json=beat, headers=node.headers).status_code == 200
        ok = co.submit(user, {"command": ["true"]})
        att = co.next_start(node)
        assert att["job_id"] == ok["id"]
        assert co.report(node, att, "started").status_code == 200
        time.sleep(1.2)  # at least one whole second billed
        r = co.report(
            node,
            att,
            "finished",
            exit_code=0,
            energy=[{"index": att["gpu_indices"][0], "joules": 12.5}],
        )
        assert r.status_code == 200, r.text
        bad = co.submit(user, {"command": ["false"], "max_retries": 0})
        att = co.next_start(node)
        assert att["job_id"] == bad["id"]
        assert co.report(node, att, "finished", exit_code=None, lost=True).status_code == 200

        def series(i: int) -> str:
            return (
                f'gpu="{node.id}/{i}",index="{i}",model="A100-80GB",node="{node.id}",owner="prov"'
            )

        g0, g1 = series(0), series(1)

        text = _scrape_once_flushed(co, f"gpunet_gpu_utilization_percent{{{g0}}}")
        assert _metric(text, "gpunet_gpu_utilization_percent", g0) == 87.5
        assert _metric(text, "gpunet_gpu_memory_used_bytes", g0) == 1024 * 1024 * 1024
        assert _metric(text, "gpunet_gpu_power_watts", g0) == 250.0
        assert _metric(text, "gpunet_gpu_temperature_celsius", g1) == 41.0
        assert f"gpunet_gpu_temperature_celsius{{{g0}}}" not in text  # never reported
        assert _metric(text, "gpunet_gpu_healthy", g0) == 1
        assert _metric(text, "gpunet_gpu_online", g1) == 1
        assert _metric(text, "gpunet_gpu_owner_busy", g1) == 0
        assert _metric(text, "gpunet_gpus", 'state="owner_busy"') == 0
        assert _metric(text, "gpunet_gpu_energy_joules_total", g0) == 5000.0
        assert f"gpunet_gpu_energy_joules_total{{{g1}}}" not in text  # no counter reported
        assert _metric(text, "gpunet_gpu_health_status", g0 + ',status="healthy"') == 1
        assert _metric(text, "gpunet_gpu_lifecycle_stage", g0 + ',stage="active"') == 1
        used = _metric(text, "gpunet_gpu_job_energy_joules_total", g0)
        used += _metric(text, "gpunet_gpu_job_energy_joules_total", g1)
        assert used == 12.5
        assert _metric(text, "gpunet_jobs_submitted_total") == 2
        assert _metric(text, "gpunet_jobs_finished_total", 'result="succeeded"') == 1
        assert _metric(text, "gpunet_jobs_finished_total", 'result="failed"') == 1
        assert _metric(text, "gpunet_attempts_lost_total", 'cause="agent"') == 1
        assert _metric(text, "gpunet_attempts_lost_total", 'cause="lease"') == 0
        assert _metric(text, "gpunet_attempts_requeued_total", 'cause="preempted"') == 0
        assert _metric(text, "gpunet_credits_charged_total") >= 1  # whole seconds at 1/s


def test_metrics_pass_promtool(db_url: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool is not installed (apt-get install prometheus)")
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        beat = {"gpus": [{"index": 0, "utilization_pct": 10.0, "energy_j": 1.0}]}
        assert co.c.post("/v1/agent/heartbeat", json=beat, headers=node.headers).status_code == 200
        co.submit(co.token("consumer", "alice"), {"command": ["true"]})
        text = co.c.get("/metrics").text
    out = subprocess.run(
        [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gpunet_gpu_healthy" in text


def test_the_grafana_dashboard_reads_only_series_the_coordinator_exports(db_url: str) -> None:
    dash = json.loads(
        (Path(__file__).parents[2] / "docs" / "grafana" / "gpunet-fleet.json").read_text()
    )
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    wanted = {name for e in exprs for name in re.findall(r"gpunet_[a-z_]+", e)}
    with coordinator(db_url) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        beat = {
            "gpus": [
                {
                    "index": 0,
                    "utilization_pct": 1.0,
                    "memory_used_mb": 1.0,
                    "temperature_c": 30.0,
                    "power_w": 50.0,
                    "energy_j": 1.0,
                }
            ]
        }
        assert co.c.post("/v1/agent/heartbeat", json=beat, headers=node.headers).status_code == 200
        text = _scrape_once_flushed(co, "gpunet_gpu_power_watts{")
    exported = set(re.findall(r"^(gpunet_[a-z_]+)[{ ]", text, re.M))
    assert wanted and wanted <= exported, sorted(wanted - exported)
