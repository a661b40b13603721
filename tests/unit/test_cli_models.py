"""The CLI's tables and views read the coordinator's answers as typed wire models: they render
what an answer holds, skip keys a newer coordinator adds, and ``--json`` stays the raw answer."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gpunet.cli import fleet, gpus, jobs, market, output
from gpunet.cli.main import app
from gpunet.sdk.client import Client
from gpunet.wire import resources as R

T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-01T00:01:00+00:00"

ATTEMPT = {
    "id": "att-1",
    "number": 1,
    "node_id": "node-1",
    "gpu_ids": ["node-1/0"],
    "state": "succeeded",
    "exit_code": 0,
    "reason": "exited",
    "started_at": T0,
    "finished_at": T1,
}
SUMMARY = {
    "id": "job-1",
    "name": "train",
    "state": "succeeded",
    "account_id": "acct-1",
    "account": "bob",
    "priority": 0,
    "gpus": 1,
    "exit_code": 0,
    "reason": "",
    "retries_used": 0,
    "max_retries": 2,
    "created_at": T0,
    "started_at": T0,
    "finished_at": T1,
    "spec": {"name": "train", "command": ["python", "train.py"], "resources": {"gpus": 1}},
}
GPU_ENERGY = {
    "attempt_id": "att-1",
    "gpu_id": "node-1/0",
    "joules": 3.6e6,
    "method": "counter",
    "resets": 0,
    "seconds": 60.0,
    "counter_start_j": 0.0,
    "counter_end_j": 3.6e6,
}
JOB = SUMMARY | {
    "attempts": [ATTEMPT],
    "node_id": None,
    "gpu_ids": [],
    "energy": {
        "gpu_joules": 3.6e6,
        "gpu_kwh": 1.0,
        "facility_kwh": 1.5,
        "co2e_kg": 0.3,
        "cost": 0.225,
        "pue": 1.5,
        "gpus": [GPU_ENERGY],
    },
}
EVENTS = [
    {"at": T0, "from": None, "to": "queued", "reason": "submitted", "actor": "tok-1"},
    {"at": T1, "from": "queued", "to": "assigned", "reason": "placed", "actor": "scheduler"},
]
WHY = {
    "job_id": "job-2",
    "state": "queued",
    "summary": "0 of 4 GPUs fit",
    "total_gpus": 4,
    "fitting_gpus": 0,
    "rejections": {"memory": 4},
    "note": "an A100 frees up soon",
    "would_place": {"node_id": "node-1", "gpu_ids": ["node-1/0", "node-1/1"]},
}
NODE = {
    "id": "node-1",
    "name": "rig",
    "account_id": "acct-2",
    "owner": "alice",
    "status": "online",
    "simulated": True,
    "site": None,
    "agent_version": "0.1.0",
    "registered_at": T0,
    "last_heartbeat_at": T1,
    "gpus": 2,
    "gpus_busy": 1,
    "gpu_models": ["A100-80GB"],
    "reliability": 0.97,
    "isolation": "container",
    "runtimes": ["podman"],
    "accepts_unisolated": False,
}
GPU = {
    "id": "node-1/0",
    "node_id": "node-1",
    "index": 0,
    "uuid": "GPU-0",
    "model": "A100-80GB",
    "name": "NVIDIA A100",
    "memory_mb": 80000,
    "compute_capability": "8.0",
    "simulated": True,
    "healthy": True,
    "drained": False,
    "busy": True,
    "owner": "alice",
    "attempt_id": None,
    "utilization_pct": 93.0,
    "memory_used_mb": 41000.0,
    "temperature_c": 61.0,
    "power_w": 250.0,
    "telemetry_at": T1,
    "price_per_hour": "1.500000",
    "lifecycle_state": "active",
    "tier": "training",
    "health_status": "healthy",
    "health_reasons": [],
}
OFFER = {
    "gpu_id": "node-1/0",
    "node_id": "node-1",
    "model": "A100-80GB",
    "memory_gb": 80.0,
    "compute_capability": "8.0",
    "price_per_hour": None,
    "reliability": 0.966,
    "tier": "training",
    "site": "eu-west",
    "state": "idle",
    "available": True,
    "simulated": True,
    "owner": "alice",
    "isolation": "sandbox",
    "runtimes": [],
}
BALANCE = {
    "account": "bob",
    "account_id": "acct-3",
    "balance": "98.500000",
    "held": "1.500000",
    "max_concurrent_gpus": 4,
    "monthly_spend": None,
}

# what a newer coordinator might answer: a key this client has never heard of, in every object
NEWER = {"added_later": {"any": "thing"}}
MAPS = {"spec", "rejections", "scores"}  # free-form mappings, not objects with named fields


def _newer(answer: Any) -> Any:
    if isinstance(answer, list):
        return [_newer(a) for a in answer]
    if isinstance(answer, dict):
        return {k: v if k in MAPS else _newer(v) for k, v in answer.items()} | NEWER
    return answer


ANSWERS: dict[str, Any] = {
    "/v1/jobs": [SUMMARY],
    "/v1/jobs/job-1": JOB,
    "/v1/jobs/job-1/events": EVENTS,
    "/v1/jobs/job-2/why": WHY,
    "/v1/nodes": [NODE],
    "/v1/gpus": [GPU],
    "/v1/offers": [OFFER],
    "/v1/balance": BALANCE,
    "/v1/energy": [
        {
            "account": "alice",
            "account_id": "acct-2",
            **{k: v for k, v in JOB["energy"].items() if k != "gpus"},
            "gpus": [
                {"gpu_id": "node-1/0", **{k: v for k, v in JOB["energy"].items() if k != "gpus"}}
            ],
        }
    ],
}


def _coordinator(answers: dict[str, Any]) -> Callable[[], Client]:
    """A Client factory whose coordinator answers ``answers[path]`` in-process."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    def make() -> Client:
        client = Client("http://127.0.0.1:1", "tok", verify=True)
        client._http.close()
        client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
        return client

    return make


@pytest.fixture(params=["current", "newer"])
def answers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The CLI talks to a coordinator answering as this client knows it, or with added keys."""
    out = ANSWERS if request.param == "current" else {k: _newer(v) for k, v in ANSWERS.items()}
    for module in (jobs, fleet, market, gpus):
        monkeypatch.setattr(module, "Client", _coordinator(out))
    monkeypatch.setattr(output.console, "width", 250)  # every column fits: no wrapping
    return out


@pytest.fixture(autouse=True)
def _local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tables print local time with its zone: one hour east of UTC here (a POSIX rule, so no
    time zone database is needed)."""
    monkeypatch.setenv("TZ", "CET-1")
    monkeypatch.delenv("GPUNET_UTC", raising=False)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _table(out: str) -> list[list[str]]:
    """A Rich table's header and rows as lists of cells."""
    return [
        [cell.strip() for cell in line.strip().strip("┃│").split("┃" if "┃" in line else "│")]
        for line in out.splitlines()
        if "│" in line or "┃" in line
    ]


@pytest.mark.usefixtures("answers")
def test_jobs_table() -> None:
    header, row = _table(_cli("jobs"))
    assert header == [
        "ID",
        "NAME",
        "STATE",
        "ACCOUNT",
        "GPUS",
        "EXIT",
        "SUBMITTED",
        "STARTED",
        "ENDED",
    ]
    assert row == [
        "job-1",
        "train",
        "succeeded",
        "bob",
        "1",
        "0",
        "2026-01-01 01:00:00 CET",
        "2026-01-01 01:00:00 CET",
        "2026-01-01 01:01:00 CET",
    ]
    # --utc (or GPUNET_UTC=1) prints the same instants in UTC, saying so
    header, row = _table(_cli("--utc", "jobs"))
    assert row[6:] == [
        "2026-01-01 00:00:00 UTC",
        "2026-01-01 00:00:00 UTC",
        "2026-01-01 00:01:00 UTC",
    ]


@pytest.mark.usefixtures("answers")
def test_jobs_show() -> None:
    out = _cli("jobs", "show", "job-1")
    lines = out.splitlines()
    assert lines[0] == "job-1 train  succeeded"
    assert "  account       bob" in lines
    assert "  reason        -" in lines and "  node_id       -" in lines
    assert "  gpu_ids       -" in lines and "  max_retries   2" in lines
    assert "  started_at    2026-01-01 01:00:00 CET" in lines
    assert "  command       python train.py" in lines
    assert "  energy        1 kWh GPU, 1.5 kWh facility (PUE 1.5), 0.3 kg CO2e, cost 0.225" in lines
    header, row = _table(out)
    assert header == ["#", "ATTEMPT", "NODE", "GPUS", "STATE", "EXIT", "STARTED", "RAN", "REASON"]
    assert row == [
        "1",
        "att-1",
        "node-1",
        "node-1/0",
        "succeeded",
        "0",
        "2026-01-01 01:00:00 CET",
        "-",
        "exited",
    ]


@pytest.mark.usefixtures("answers")
def test_jobs_show_prints_no_python_list_and_no_exponent() -> None:
    """Every number in `jobs show` has its kind's format: no ``['a']`` and no ``2e-06``."""
    tiny = JOB | {
        "gpu_ids": ["node-1/0", "node-1/1"],
        "node_id": "node-1",
        "energy": JOB["energy"] | {"gpu_kwh": 2e-06, "facility_kwh": 3e-06, "co2e_kg": 1e-06},
        "spec": JOB["spec"] | {"resources": {"gpus": 2, "cpus": 8.0, "memory_gb": 64.0}},
    }
    job = R.parse(R.Job, tiny)
    with output.console.capture() as cap:
        jobs.show_job(job)
    out = cap.get()
    assert "[" not in out and "]" not in out, out
    assert not re.search(r"\d[eE][-+]?\d", out), out
    assert "  gpu_ids       node-1/0, node-1/1" in out.splitlines()
    assert "0.000002 kWh GPU" in out and "0.000001 kg CO2e" in out
    assert "8 CPUs, 64 GB memory" in out


@pytest.mark.usefixtures("answers")
def test_jobs_events_and_why() -> None:
    header, first, second = _table(_cli("jobs", "events", "job-1"))
    assert header == ["AT", "FROM", "TO", "REASON", "BY"]
    assert first == ["2026-01-01 01:00:00 CET", "-", "queued", "submitted", "tok-1"]
    assert second[1:3] == ["queued", "assigned"]
    assert _cli("jobs", "why", "job-2").splitlines() == [
        "job-2 (queued): 0 of 4 GPUs fit",
        "  an A100 frees up soon",
        "  next placement: node-1 GPUs node-1/0,node-1/1",
    ]


@pytest.mark.usefixtures("answers")
def test_nodes_gpus_offers_balance() -> None:
    header, row = _table(_cli("nodes"))
    assert dict(zip(header, row, strict=True)) == {
        "NODE": "node-1",
        "NAME": "rig",
        "STATUS": "online",
        "GPUS": "2",
        "BUSY": "1",
        "MODELS": "A100-80GB",
        "OWNER": "alice",
        "ISOLATION": "container",
        "RUNTIMES": "podman",
        "RELIABILITY": "97.0%",
        "SIMULATED": "yes",
        "LAST HEARTBEAT": "2026-01-01 01:01:00 CET",
    }
    header, row = _table(_cli("gpus"))
    assert dict(zip(header, row, strict=True)) == {
        "GPU": "node-1/0",
        "MODEL": "A100-80GB",
        "STATE": "busy",
        "OWNER": "alice",
        "UTIL": "93.0%",
        "MEMORY": "41 GB of 80 GB",
        "TEMP C": "61",
        "POWER W": "250",
        "SIMULATED": "yes",
    }
    out = _cli("offers")
    assert "1 offer(s)" in out
    header, row = _table(out)
    assert dict(zip(header, row, strict=True)) == {
        "GPU": "node-1/0",
        "MODEL": "A100-80GB",
        "MEMORY": "80 GB",
        "PRICE": "free",
        "RELIABILITY": "96.6%",
        "TIER": "training",
        "SITE": "eu-west",
        "OWNER": "alice",
        "ISOLATION": "sandbox",
        "RUNTIMES": "-",
        "STATE": "idle",
    }
    assert _cli("balance").splitlines() == [
        "bob: balance 98.50, held 1.50",
        "  quota: 4 GPUs at once, no cap on spend per month",
    ]


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("jobs",), "/v1/jobs"),
        (("jobs", "show", "job-1"), "/v1/jobs/job-1"),
        (("jobs", "events", "job-1"), "/v1/jobs/job-1/events"),
        (("jobs", "why", "job-2"), "/v1/jobs/job-2/why"),
        (("nodes",), "/v1/nodes"),
        (("gpus",), "/v1/gpus"),
        (("offers",), "/v1/offers"),
        (("balance",), "/v1/balance"),
    ],
)
def test_json_is_the_raw_answer(answers: dict[str, Any], args: tuple[str, ...], path: str) -> None:
    """Scripts get what the coordinator said, added keys included, not what the model knows."""
    assert _cli(*args, "--json") == json.dumps(answers[path], indent=2) + "\n"


def test_a_view_renders_from_a_parsed_model(capsys: pytest.CaptureFixture[str]) -> None:
    job = R.parse(R.Job, _newer(JOB) | {"state": "failed", "exit_code": 3})
    jobs.show_job(job)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "job-1 train  failed"
    assert "  exit_code     3" in out.splitlines()
    assert "added_later" not in out


@pytest.mark.usefixtures("answers")
def test_energy_names_the_owner() -> None:
    rows = _table(_cli("gpus", "energy"))
    assert rows[1] == ["alice", "1 kWh GPU, 1.5 kWh facility (PUE 1.5), 0.3 kg CO2e, cost 0.225"]
    assert rows[2][0] == "node-1/0"
    assert "acct-2" not in str(rows)
