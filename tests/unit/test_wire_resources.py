"""The answer models: exact on the coordinator, lenient where a client reads them."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import ValidationError

from gpunet.services.auth import Role
from gpunet.wire import resources as R


def _job() -> dict[str, Any]:
    attempt = {
        "id": "att-1",
        "number": 1,
        "node_id": "node-1",
        "gpu_ids": ["node-1/0"],
        "state": "succeeded",
        "exit_code": 0,
        "reason": "",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
    }
    energy = {"gpu_joules": 0.0, "gpu_kwh": 0.0, "facility_kwh": 0.0, "co2e_kg": 0.0}
    return {
        "id": "job-1",
        "name": "t",
        "state": "succeeded",
        "account_id": "acct-1",
        "priority": 0,
        "gpus": 1,
        "exit_code": 0,
        "reason": "",
        "retries_used": 0,
        "max_retries": 0,
        "created_at": "2026-01-01T00:00:00+00:00",
        "started_at": None,
        "finished_at": None,
        "spec": {"name": "t"},
        "attempts": [attempt],
        "node_id": None,
        "gpu_ids": [],
        "energy": energy | {"cost": 0.0, "gpus": []},
    }


def test_the_coordinator_refuses_a_key_the_model_does_not_name() -> None:
    job = _job()
    R.Job.model_validate(job)
    job["attempts"][0]["fencing_token"] = 7
    with pytest.raises(ValidationError, match=r"attempts\.0\.fencing_token"):
        R.Job.model_validate(job)


def test_a_client_skips_keys_a_newer_coordinator_adds() -> None:
    job = _job() | {"added_later": 1}
    job["attempts"][0]["fencing_token"] = 7
    job["energy"]["gpus"] = [
        {
            "attempt_id": "att-1",
            "gpu_id": "node-1/0",
            "joules": 5.0,
            "method": "counter",
            "resets": 0,
            "seconds": 1.0,
            "counter_start_j": None,
            "counter_end_j": None,
            "new_counter": 3,
        }
    ]
    parsed = R.parse(R.Job, job)
    assert parsed.attempts[0].number == 1 and parsed.energy.gpus[0].joules == 5.0
    assert parsed.energy.pue is None  # absent site factors stay absent
    with pytest.raises(ValidationError, match="state"):
        R.parse(R.Job, _job() | {"state": "exploded"})  # known keys are still checked


def test_an_event_travels_with_its_from_key() -> None:
    at = "2026-01-01T00:00:00+00:00"
    raw = {"at": at, "from": None, "to": "queued", "reason": "submitted", "actor": "tok-1"}
    event = R.JobEvent.model_validate(raw)
    assert event.from_ is None and event.model_dump(by_alias=True) == raw


def test_roles_on_the_wire_are_the_services_roles() -> None:
    assert set(get_args(R.Role)) == {r.value for r in Role}
