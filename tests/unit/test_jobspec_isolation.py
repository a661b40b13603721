"""The job spec's isolation, trusted owners, CPU and memory requests and container image."""

from __future__ import annotations

from typing import Any

import pytest

from gpunet.core.isolation import Isolation
from gpunet.core.jobspec import parse_spec
from gpunet.errors import ValidationFailed


def spec(**kw: Any) -> dict[str, Any]:
    return {"command": ["python", "train.py"], **kw}


def test_defaults_ask_for_nothing_new() -> None:
    s = parse_spec(spec())
    r = s.resources
    assert (r.isolation, r.owners, r.cpus, r.memory_gb, s.image) == (
        Isolation.NONE,
        [],
        None,
        None,
        None,
    )


def test_fields_parse_and_survive_a_round_trip() -> None:
    s = parse_spec(
        spec(
            image="ghcr.io/acme/train:1.2",
            resources={
                "isolation": "container",
                "owners": ["bob", "alice", "bob"],
                "cpus": 3.5,
                "memory_gb": 24,
            },
        )
    )
    assert s.resources.owners == ["alice", "bob"]
    assert (s.resources.cpus, s.resources.memory_gb) == (3.5, 24.0)
    stored = s.model_dump(mode="json")
    assert stored["image"] == "ghcr.io/acme/train:1.2"
    assert stored["resources"]["isolation"] == "container"
    assert parse_spec(stored) == s


def test_an_image_implies_container_isolation() -> None:
    s = parse_spec(spec(image="python:3.11"))
    assert s.resources.isolation is Isolation.CONTAINER
    # what the coordinator stores (and the agent receives) says so too
    assert s.model_dump(mode="json")["resources"]["isolation"] == "container"
    assert parse_spec(spec(resources={"isolation": "sandbox"})).resources.isolation == "sandbox"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (spec(resources={"isolation": "vm"}), "resources.isolation", "'none', 'sandbox' or"),
        (
            spec(image="python:3.11", resources={"isolation": "sandbox"}),
            "resources.isolation",
            "a job with an image runs in a container; sandbox is too low",
        ),
        (spec(resources={"owners": ["ok", " spaced"]}), "resources.owners", "not an account"),
        (spec(resources={"owners": "alice"}), "resources.owners", "valid list"),
        (spec(resources={"owners": [f"a{i}" for i in range(65)]}), "resources.owners", "64"),
        (spec(resources={"cpus": 0}), "resources.cpus", "greater than 0"),
        (spec(resources={"cpus": "many"}), "resources.cpus", "valid number"),
        (spec(resources={"memory_gb": -2}), "resources.memory_gb", "greater than 0"),
        (spec(image="py thon"), "image", "must not contain whitespace"),
        (spec(image=""), "image", "must not be empty"),
        (spec(image="--privileged"), "image", "must not start with '-'"),
        (spec(image="x" * 513), "image", "at most 512 characters"),
        (spec(resources={"runtime": "podman"}), "resources.runtime", "unknown field"),
    ],
)
def test_errors_name_the_field(body: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_spec(body)
    assert err.value.field == field
    assert reason in err.value.reason


def test_container_isolation_without_an_image_is_refused() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_spec(spec(resources={"isolation": "container"}))
    assert exc.value.field == "resources.isolation"
    assert "needs an image" in exc.value.reason
