"""The agent protocol has one set of models: what the agent sends is what the coordinator
validates, the answers the coordinator declares are what the agent reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gpunet.agent import bench, energy
from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.agent.loop import Agent, health_reports, minimal_finish
from gpunet.core.benchmark import simulated_result
from gpunet.core.energy import Meter, Sample, step
from gpunet.core.health import HealthReading
from gpunet.services.tiers import _parse
from gpunet.wire.agent import (
    BenchmarkReport,
    FinishReport,
    Heartbeat,
    HeartbeatAnswer,
    Registration,
    Work,
)


def _wire(body: Any) -> Any:
    """What travels: the JSON text, read back."""
    return json.loads(json.dumps(body))


@pytest.fixture
def backend() -> SimulatedBackend:
    return SimulatedBackend(parse_simulate("2xA100-80GB,1xRTX-4090"))


def test_the_agents_registration_is_what_the_coordinator_accepts(
    tmp_path: Path, backend: SimulatedBackend
) -> None:
    agent = Agent("http://coordinator.test", backend, tmp_path, name="rig-1", site="lab")
    reg = Registration.model_validate(_wire(agent._registration()))
    assert reg.name == "rig-1" and reg.site == "lab" and reg.isolation.value == "none"
    assert [(g.index, g.model, g.memory_mb) for g in reg.gpus] == [
        (g.index, g.model, g.memory_mb) for g in backend.discover()
    ]
    assert all(g.simulated for g in reg.gpus) and reg.gpus[2].model == "RTX-4090"


def test_the_agents_heartbeat_round_trips_and_feeds_the_health_rules(
    backend: SimulatedBackend,
) -> None:
    readings = backend.telemetry({0})
    beat = Heartbeat(
        gpus=[t.to_wire() for t in readings],
        attempts=["att-1"],
        health=health_reports(backend.health({0})),
    )
    seen = Heartbeat.model_validate(_wire(beat.model_dump(mode="json")))
    assert seen == beat
    assert [g.index for g in seen.gpus] == [0, 1, 2]
    assert seen.gpus[0].power_w == readings[0].power_w
    assert seen.gpus[0].energy_j == readings[0].energy_j
    # the coordinator's health rules read what the heartbeat carries
    parsed = [HealthReading.from_dict(h.model_dump(mode="json")) for h in seen.health]
    assert [p.index for p in parsed] == [0, 1, 2]
    assert parsed[0].throttle_reasons == 0 and parsed[1].throttle_reasons == 1


def test_a_reading_out_of_bounds_is_left_out_not_sent() -> None:
    good = {"index": 0, "temperature_c": 60.0}
    assert [h.index for h in health_reports([good, {"index": 0, "xids": ["x"]}])] == [0]
    assert len(health_reports([good, {"index": 5000}])) == 1


def test_a_finished_report_carries_the_meters_as_the_coordinator_stores_them() -> None:
    m = Meter()
    for t, counter in ((0.0, 1000.0), (5.0, 3500.0), (10.0, 6000.0)):
        m = step(m, Sample(t, counter, 250.0))
    rep = FinishReport(fencing_token=7, exit_code=0, energy=energy.report({1: m}))
    seen = FinishReport.model_validate(_wire(rep.model_dump(mode="json")))
    (used,) = seen.energy
    assert (used.index, used.joules, used.method, used.samples) == (1, 5000.0, "counter", 3)
    assert (used.counter_start_j, used.counter_end_j, used.seconds) == (1000.0, 6000.0, 10.0)
    assert minimal_finish(seen).model_dump() == {
        "fencing_token": 7,
        "exit_code": 0,
        "reason": "the coordinator refused the full report",
        "lost": False,
        "reclaimed": False,
        "rendezvous_failed": False,
        "energy": [],
        "runtime_s": None,
    }


def test_benchmark_results_arrive_as_the_agent_measured_them() -> None:
    ran = simulated_result(0, "A100-80GB", 0.6)
    rep = BenchmarkReport(kind="burn_in", results=[bench.to_wire(ran)])
    seen = BenchmarkReport.model_validate(_wire(rep.model_dump(mode="json")))
    assert _parse(seen.results[0]) == ran


def test_answers_ignore_what_a_newer_coordinator_adds() -> None:
    item = {
        "attempt_id": "att-1",
        "job_id": "job-1",
        "fencing_token": 3,
        "number": 1,
        "gpu_indices": [0],
        "gpu_ids": ["node-1/0"],
        "spec": {"command": ["true"]},
        "max_log_bytes": 100,
        "priority_hint": "new",
    }
    work = Work.model_validate({"start": [item], "stop": [], "drain": True})
    assert work.start[0].fencing_token == 3 and work.start[0].workdir_size is None
    beat = HeartbeatAnswer.model_validate({"stop": ["att-2"], "lease_timeout_s": 9, "x": 1})
    assert beat.stop == ["att-2"] and beat.lease_timeout_s == 9.0
    with pytest.raises(ValidationError, match="lease_timeout_s"):
        HeartbeatAnswer.model_validate({"stop": []})  # a renamed field is caught


def test_requests_keep_their_bounds() -> None:
    gpu = {"index": 0, "uuid": "u", "name": "n", "memory_mb": 1}
    with pytest.raises(ValidationError, match="appears more than once"):
        Registration.model_validate({"name": "a", "gpus": [gpu, gpu]})
    with pytest.raises(ValidationError, match="fencing_token"):
        FinishReport.model_validate({"fencing_token": 2**63})
    with pytest.raises(ValidationError, match="energy.0.joules"):
        FinishReport.model_validate({"fencing_token": 1, "energy": [{"index": 0, "joules": -1}]})


def test_the_agent_protocol_loads_without_the_coordinators_stack() -> None:
    code = (
        "import sys, gpunet.wire.agent, gpunet.agent.loop; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('gpunet.api', 'gpunet.services', 'gpunet.store'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_document_declares_every_agent_answer() -> None:
    from gpunet.api.app import create_app
    from gpunet.settings import Settings

    doc = create_app(Settings(database_url="sqlite://")).openapi()
    agent_ops = {
        (method, path): op
        for path, ops in doc["paths"].items()
        if path.startswith("/v1/agent/")
        for method, op in ops.items()
    }
    expected = {
        ("post", "/v1/agent/register"): ("201", "Registered"),
        ("post", "/v1/agent/hello"): ("200", "Hello"),
        ("post", "/v1/agent/heartbeat"): ("200", "HeartbeatAnswer"),
        ("get", "/v1/agent/work"): ("200", "Work"),
        ("post", "/v1/agent/attempts/{attempt_id}/started"): ("200", "Accepted"),
        ("post", "/v1/agent/attempts/{attempt_id}/logs"): ("200", "LogsAccepted"),
        ("post", "/v1/agent/attempts/{attempt_id}/finished"): ("200", "Accepted"),
        ("post", "/v1/agent/reports"): ("200", "ReportsAccepted"),
        ("post", "/v1/agent/benchmarks"): ("200", "BenchmarkScore"),
        ("post", "/v1/agent/attempts/{attempt_id}/checkpoints"): ("201", "CheckpointCreated"),
        (
            "put",
            "/v1/agent/attempts/{attempt_id}/checkpoints/{checkpoint_id}/objects/{digest}",
        ): ("200", "Accepted"),
        (
            "post",
            "/v1/agent/attempts/{attempt_id}/checkpoints/{checkpoint_id}/commit",
        ): ("200", "CheckpointCommitted"),
    }
    binary = {
        ("get", "/v1/agent/blobs/{digest}"),
        ("get", "/v1/agent/checkpoints/objects/{digest}"),
    }
    assert set(expected) | binary == set(agent_ops)
    for key, (status, model) in expected.items():
        schema = agent_ops[key]["responses"][status]["content"]["application/json"]["schema"]
        assert model in json.dumps(schema), (key, schema)
        assert (
            model in doc["components"]["schemas"]
            or f"{model}-Output" in (doc["components"]["schemas"])
        )
    work = doc["components"]["schemas"]["Work"]["properties"]["start"]
    assert work["items"]["$ref"].endswith("/StartItem")
