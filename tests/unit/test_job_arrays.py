"""Job arrays in the spec and in a task's environment."""

from __future__ import annotations

import pytest

from gpunet.agent.sandbox.env import job_env
from gpunet.core.jobspec import MAX_ARRAY, parse_spec
from gpunet.errors import ValidationFailed


def test_array_size_is_bounded() -> None:
    assert parse_spec({"command": "true", "array": 1}).array == 1
    assert parse_spec({"command": "true", "array": MAX_ARRAY}).array == MAX_ARRAY
    assert parse_spec({"command": "true"}).array is None
    for bad in (0, -1, MAX_ARRAY + 1, "many"):
        with pytest.raises(ValidationFailed) as exc:
            parse_spec({"command": "true", "array": bad})
        assert exc.value.field == "array"


def test_a_task_knows_its_index_and_cannot_forge_it() -> None:
    spec = {"env": {"GPUNET_ARRAY_INDEX": "99", "GPUNET_ARRAY_ID": "arr-forged"}}
    task = {"job_id": "j1", "attempt_id": "a1", "number": 1}
    env = job_env(spec, [0], task | {"array_id": "arr-1", "array_index": 7}, home="/w")
    assert env["GPUNET_ARRAY_INDEX"] == "7" and env["GPUNET_ARRAY_ID"] == "arr-1"
    env = job_env({}, [0], task | {"array_id": "arr-1", "array_index": 0}, home="/w")
    assert env["GPUNET_ARRAY_INDEX"] == "0"  # index 0 is an index, not "none"
    assert "GPUNET_ARRAY_INDEX" not in job_env({}, [0], task, home="/w")
