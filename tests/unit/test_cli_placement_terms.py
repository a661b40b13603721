"""`gpunet jobs show` lines for a job's image, isolation, trusted owners and requests."""

from __future__ import annotations

from gpunet.cli.jobs import placement_terms


def test_only_what_is_set_is_shown() -> None:
    assert placement_terms({"command": ["true"], "resources": {"isolation": "none"}}) == []
    lines = placement_terms(
        {
            "image": "python:3.11",
            "resources": {
                "isolation": "container",
                "owners": ["alice", "bob"],
                "cpus": 2.0,
                "memory_gb": 8.5,
            },
        }
    )
    assert [line.split()[0] for line in lines] == ["image", "isolation", "owners", "requests"]
    assert lines[0].endswith("python:3.11")
    assert lines[1].endswith("at least container")
    assert lines[2].endswith("alice, bob")
    assert lines[3].endswith("2 CPUs, 8.5 GB memory")
