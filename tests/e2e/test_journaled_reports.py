"""End to end: an agent killed with -9 after its job finished but before the report reached
the coordinator delivers the journaled report when it restarts, and the job is not run again.
Real processes, on SQLite (the journal is the agent's; the integration tests settle late
reports on both databases)."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gpunet.core.ledger import charge_for, metered_seconds
from tests.conftest import only_on
from tests.e2e.procs import Network, logs_on_failure, wait_for

pytestmark = pytest.mark.e2e


def _state(net: Network, token: str, job_id: str) -> str:
    r = httpx.get(
        f"{net.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    return str(r.json()["state"])


@only_on("sqlite")  # the agent's journal
def test_a_journaled_report_survives_kill9_and_the_job_is_not_run_again(
    tmp_path: Path, db_url: str
) -> None:
    # a lease long enough that the 4-second job ends before the cut-off agent stops it
    net = Network(tmp_path, db_url, lease_timeout=20.0)
    with logs_on_failure(net):
        net.start_coordinator()
        owner = net.token("provider", "owner")
        net.start_agent("a1", "1xA100-80GB", owner)
        net.user = user = net.token("consumer", "alice")
        net.wait_online(1)
        (node,) = net.cli_json(net.admin, "nodes")
        net.cli_json(owner, "price", "set", "--node", node["id"], "3.6")
        net.cli_json(net.admin, "credits", "grant", "--account", "alice", "50")
        spec = tmp_path / "job.yaml"
        spec.write_text(
            textwrap.dedent(
                """
                name: once
                command:
                  - python3
                  - -c
                  - |
                    import os, time
                    time.sleep(4)
                    print('ran', os.environ['GPUNET_ATTEMPT_ID'])
                max_retries: 3
                """
            )
        )
        job_id = net.cli_json(user, "submit", str(spec))["id"]
        wait_for(lambda: _state(net, user, job_id) == "running", 30, "the job to run", 0.05)
        net.stop_coordinator()  # the finish report cannot be delivered
        journal = tmp_path / "agent-a1" / "reports.journal"
        wait_for(
            lambda: journal.exists() and b'"k":"finished"' in journal.read_bytes(),
            20,
            "the finish report in the agent's journal",
        )
        net.agents["a1"].kill9()  # the report dies with the agent's memory, not its journal
        net.start_coordinator()
        net.start_agent("a1", "1xA100-80GB", owner)
        wait_for(
            lambda: net.job(user, job_id)["state"] in ("succeeded", "failed"),
            60,
            "the job to be settled",
        )
        job = net.cli_json(user, "jobs", "show", job_id)
        assert job["state"] == "succeeded"
        (att,) = job["attempts"]  # not run again
        assert att["state"] == "succeeded" and att["exit_code"] == 0
        assert 3.9 <= att["runtime_s"] < 7.0
        out = net.cli(user, "logs", job_id).stdout
        assert out.split() == ["ran", att["id"]]
        # billed the measured running time, not the time the report spent in the journal
        cost = charge_for(metered_seconds(att["runtime_s"]), Decimal("3.6"))
        assert Decimal(net.cli_json(user, "spend")["total_charged"]) == cost
        r = net.cli(net.admin, "ledger", "verify")
        assert r.returncode == 0 and "ledger ok" in r.stdout, r.stdout + r.stderr
        assert wait_for(lambda: journal.read_bytes() == b"", 20, "the journal to be compacted")
