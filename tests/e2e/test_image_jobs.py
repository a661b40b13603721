"""Jobs that name an image run in a container of the owner's runtime: real coordinator and
agent processes, podman with a test image built here. Skipped, with the measured error,
where podman cannot run containers; the namespace sandbox carries the hostile-tenant suite.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpunet.agent.sandbox.container import LABEL_AGENT, RuntimeInfo, runtime_env
from gpunet.agent.sandbox.image_jobs import agent_key
from gpunet.sdk.client import Client
from tests.container_image import IMAGE, podman_with_test_image
from tests.e2e.procs import Network, logs_on_failure, wait_for
from tests.e2e.test_hostile_sandbox import AGENT_FLAGS, _needs_sandbox

pytestmark = pytest.mark.e2e
__all__ = ["_needs_sandbox"]  # the sandbox is required here too: containers sit beside it


@pytest.fixture(scope="module")
def podman() -> RuntimeInfo:
    return podman_with_test_image()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, podman: RuntimeInfo) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("images")
    n = Network(root, f"sqlite:///{root / 'home' / 'gpunet.db'}")
    with logs_on_failure(n):
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        n.start_agent("c1", "2xT4", n.owner, extra=[*AGENT_FLAGS, "--containers", "auto"])
        n.user = n.token("consumer", "carol")
        n.wait_online()
        yield n


def _run(
    net: Network, spec: dict[str, Any], workdir: Path | None = None, timeout: float = 60
) -> tuple[dict[str, Any], str]:
    with Client(net.url, net.user) as c:
        job = c.submit(spec, workdir=workdir)
        done = c.wait(job["id"], timeout_s=timeout, poll_s=0.2)
        logs = "".join(ch["data"] for ch in c.logs(job["id"])["chunks"])
    print(logs)
    return done, logs


def _containers(podman: RuntimeInfo, net: Network) -> list[str]:
    """This test network's agent's containers (others on the host, e.g. another test's, are
    not this test's business)."""
    key = agent_key(net.root / "agent-c1")
    r = subprocess.run(
        [
            podman.path or "podman",
            "ps",
            "--all",
            f"--filter=label={LABEL_AGENT}={key}",
            "--format={{.Names}}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=runtime_env(podman),
    )
    return [n for n in r.stdout.split() if n.startswith("gpunet-")]


def test_node_offers_containers(net: Network) -> None:
    (node,) = net.cli_json(net.admin, "nodes")
    assert node["isolation"] == "container" and node["runtimes"] == ["podman"]


def test_image_job_runs_in_a_container_with_its_workdir(net: Network, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from the workdir\n")
    done, logs = _run(
        net,
        {
            "name": "in-a-box",
            "image": IMAGE,
            "command": (
                "id -u; cat in.txt; echo out > out.txt; cat out.txt;"
                " echo nets $(ls /sys/class/net);"
                f" wget -q -T 3 -O - {net.url}/healthz || echo host loopback unreachable"
            ),
            "resources": {"gpus": 1},
        },
        workdir=tmp_path,
    )
    assert done["state"] == "succeeded", logs
    lines = logs.split()
    assert lines[0] == "65534"  # never root
    assert "from the workdir" in logs and "out" in lines
    # a network of its own (the runtime's bridge), never the host's: the coordinator listening
    # on the host's loopback is out of reach, and the host's interfaces are not there
    assert "nets eth0 lo" in logs and "ifb0" not in logs
    assert "host loopback unreachable" in logs and '"status"' not in logs


def test_cancel_removes_the_container(net: Network, podman: RuntimeInfo) -> None:
    with Client(net.url, net.user) as c:
        job = c.submit({"image": IMAGE, "command": "echo up; sleep 120", "resources": {"gpus": 1}})
        wait_for(
            lambda: any("up" in ch["data"] for ch in c.logs(job["id"])["chunks"]),
            60,
            "the container's first line",
        )
        assert _containers(podman, net), "the job's container is running"
        c.cancel(job["id"])
        done = c.wait(job["id"], timeout_s=60, poll_s=0.2)
    assert done["state"] == "cancelled"
    wait_for(lambda: not _containers(podman, net), 30, "the container removed")


def test_image_job_without_a_runtime_is_explained(net: Network, tmp_path: Path) -> None:
    # a second network whose agent has no container runtime: the job is refused at submit
    n = Network(tmp_path, f"sqlite:///{tmp_path / 'home' / 'gpunet.db'}")
    try:
        n.start_coordinator()
        n.start_agent("bare", "1xT4", n.token("provider", "owner"), extra=AGENT_FLAGS)
        wait_for(lambda: n.cli_json(n.admin, "nodes"), 30, "the agent registered")
        user = n.token("consumer", "dave")
        r = n.cli(user, "run", "--gpus", "1", "--image", IMAGE, "--", "true")
        assert r.returncode != 0
        assert "isolation sandbox < required container" in (r.stdout + r.stderr)
    finally:
        n.close()
