"""The README's first command: `gpunet demo` runs a local network and a sample job end to end;
and an agent that restarts comes back as the same node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import Network, free_port, wait_for

pytestmark = pytest.mark.e2e


def test_demo_runs_a_sample_job_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env["GPUNET_HOME"] = str(tmp_path / "home")
    r = subprocess.run(
        [sys.executable, "-m", "gpunet", "demo", "--port", str(free_port()), "--simulate", "1xT4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "hello from gpunet" in out and "succeeded (exit code 0)" in out
    assert (tmp_path / "home" / "client.json").exists()
    assert "Traceback" not in out


def test_restarted_agent_is_the_same_node(tmp_path: Path) -> None:
    net = Network(tmp_path, f"sqlite:///{tmp_path / 'gpunet.db'}", lease_timeout=5.0)
    try:
        net.start_coordinator()
        join = net.token("provider", "owner")
        net.start_agent("a1", "1xL4", join)
        # polls ask the API (a CLI process a poll costs seconds on a loaded host); the CLI's
        # listing is checked once the agent is back
        wait_for(lambda: len(net.api(net.admin, "/v1/nodes")) == 1, 30, "the agent to join")
        first = net.agent_credentials("a1")["node_id"]
        net.agents["a1"].stop()  # Ctrl-C: a clean stop
        net.start_agent("a1", "1xL4", join)
        wait_for(
            lambda: (n := net.api(net.admin, "/v1/nodes"))[0]["status"] == "online" and n,
            30,
            "the agent to reconnect",
        )
        nodes = net.cli_json(net.admin, "nodes")
        assert [n["id"] for n in nodes] == [first]
        user = net.token("consumer", "u")
        r = net.cli(user, "run", "--gpus", "1", "--", "python3", "-c", "print('again')")
        assert r.returncode == 0 and "again" in r.stdout, r.stderr
    except Exception:
        print(net.logs())
        raise
    finally:
        net.close()
