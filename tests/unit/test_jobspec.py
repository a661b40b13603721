"""Job spec validation: good specs parse, each bad input names its field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gpunet.core.jobspec import JobSpec, parse_spec
from gpunet.errors import ValidationFailed

GOOD = """
name: train-llm
command: ["python", "train.py", "--epochs", "3"]
env:
  WANDB_MODE: offline
  _PRIVATE1: "x"
resources:
  gpus: 4
  min_gpu_memory_gb: 40
  gpu_models: [a100, H100-80GB, "rtx 4090"]
  min_compute_capability: "8.0"
max_retries: 1
priority: 10
labels: {team: nlp}
job_class: llm
"""


def test_good_spec_parses() -> None:
    spec = parse_spec(yaml.safe_load(GOOD))
    assert isinstance(spec, JobSpec)
    assert spec.name == "train-llm"
    assert spec.argv() == ["python", "train.py", "--epochs", "3"]
    assert spec.env == {"WANDB_MODE": "offline", "_PRIVATE1": "x"}
    r = spec.resources
    assert r.gpus == 4 and r.min_gpu_memory_gb == 40
    assert r.gpu_models == ["A100-80GB", "H100-80GB", "RTX-4090"]  # canonical names
    assert r.compute_capability() == (8, 0)
    assert (spec.max_retries, spec.priority, spec.labels) == (1, 10, {"team": "nlp"})
    # the dump parses back to the same spec
    assert parse_spec(spec.model_dump(mode="json")) == spec


def test_defaults_and_shell_command() -> None:
    spec = parse_spec({"command": "echo hi && nvidia-smi"})
    assert spec.argv() == ["/bin/sh", "-c", "echo hi && nvidia-smi"]
    assert spec.name == "job"
    assert spec.resources.gpus == 1
    assert spec.resources.gpu_models == []
    assert spec.resources.compute_capability() is None
    assert spec.max_retries == 2 and spec.priority == 0 and spec.workdir is None


def _bad(data: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as exc:
        parse_spec(data)
    err = exc.value
    assert err.status_code == 422 and err.code == "invalid"
    assert err.message == f"{err.field}: {err.reason}"
    return err


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"command": ["x"], "colour": "blue"}, "colour", "unknown field"),
        ({"command": ["x"], "resources": {"gpu": 2}}, "resources.gpu", "unknown field"),
        ({"command": []}, "command", "must not be empty"),
        ({"command": ""}, "command", "must not be empty"),
        ({"command": " \t"}, "command", "must not be empty"),
        ({}, "command", "required"),
        ({"command": ["x"], "resources": {"gpus": 0}}, "resources.gpus", "1"),
        ({"command": ["x"], "resources": {"gpus": -2}}, "resources.gpus", ""),
        ({"command": ["x"], "resources": {"gpus": 65}}, "resources.gpus", "64"),
        ({"command": ["x"], "resources": {"gpus": "two"}}, "resources.gpus", ""),
        (
            {"command": ["x"], "resources": {"min_gpu_memory_gb": -1}},
            "resources.min_gpu_memory_gb",
            "",
        ),
        (
            {"command": ["x"], "resources": {"gpu_models": ["A100", "Z9000"]}},
            "resources.gpu_models",
            "unknown GPU model 'Z9000'",
        ),
        (
            {"command": ["x"], "resources": {"min_compute_capability": "8"}},
            "resources.min_compute_capability",
            "8.0",
        ),
        (
            {"command": ["x"], "resources": {"min_compute_capability": "sm_80"}},
            "resources.min_compute_capability",
            "8.0",
        ),
        (
            {"command": ["x"], "resources": {"min_compute_capability": "8.0.1"}},
            "resources.min_compute_capability",
            "",
        ),
        ({"command": ["x"], "env": {"1ABC": "v"}}, "env", "'1ABC'"),
        ({"command": ["x"], "env": {"A-B": "v"}}, "env", "'A-B'"),
        ({"command": ["x"], "env": {"": "v"}}, "env", "environment variable"),
        ({"command": ["x"], "env": {"OK": 3}}, "env.OK", ""),
        ({"command": ["x"], "max_retries": -1}, "max_retries", ""),
        ({"command": ["x"], "priority": 5000}, "priority", ""),
        ({"command": ["x"], "name": ""}, "name", ""),
        ({"command": ["x"], "resources": "lots"}, "resources", ""),
    ],
)
def test_bad_input_names_the_field(data: dict[str, Any], field: str, words: str) -> None:
    err = _bad(data)
    assert err.field == field, err.message
    assert words in err.reason, err.message


def test_unknown_model_lists_known_ones() -> None:
    err = _bad({"command": ["x"], "resources": {"gpu_models": ["Z9000"]}})
    for known in ("A100-80GB", "H100-80GB", "RTX-4090", "T4"):
        assert known in err.reason


@pytest.mark.parametrize("data", [None, [], ["python", "x.py"], "python x.py", 42, 1.5])
def test_non_mapping_is_refused(data: Any) -> None:
    err = _bad(data)
    assert err.field == "spec"
    assert "mapping" in err.reason
