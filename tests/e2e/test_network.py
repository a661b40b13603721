"""End to end: a coordinator and two agents on simulated GPUs, real processes, driven by the
CLI. What the store must keep across a coordinator restart and an agent's kill -9 is tested
on SQLite and on PostgreSQL, each test on a network of its own; the tests that stop or kill
nothing share one network on SQLite, each as an account of its own."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import only_on
from tests.e2e.procs import Network, alive, host_pids_with, two_agent_network, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def net(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Network]:
    # a short lease makes node loss quick to see; a restart needs the lease to outlast it
    lease = 10.0 if "restart" in request.node.name else 3.0
    with two_agent_network(tmp_path, db_url, "2xA100-80GB", lease_timeout=lease) as n:
        yield n


@pytest.fixture(scope="module")
def shared_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("network")
    with two_agent_network(root, f"sqlite:///{root / 'gpunet.db'}", "2xA100-80GB") as n:
        yield n


_accounts = itertools.count(1)


@pytest.fixture
def calm(shared_net: Network) -> Network:
    """The shared network; its ``user`` is a consumer of an account of this test's own, who
    sees only this test's jobs."""
    shared_net.user = shared_net.token("consumer", f"tenant{next(_accounts)}")
    return shared_net


def _job_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(textwrap.dedent(body))
    return p


def test_job_runs_real_program_and_sees_its_gpus(calm: Network, tmp_path: Path) -> None:
    net = calm
    user = net.user
    prog = tmp_path / "work"
    prog.mkdir()
    (prog / "train.py").write_text(
        textwrap.dedent("""
        import os, sys
        print("visible", os.environ["CUDA_VISIBLE_DEVICES"])
        print("to stderr", file=sys.stderr)
        sys.exit(7)
    """)
    )
    spec = _job_file(
        tmp_path,
        """
        name: two-gpu
        command: ["python3", "train.py"]
        resources: {gpus: 2, gpu_models: [A100-80GB]}
    """,
    )
    r = net.cli(user, "submit", str(spec), "--workdir", str(prog), "--follow")
    assert r.returncode == 7, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("visible"))
    gpus = line.split()[1].split(",")
    assert len(gpus) == 2 and len(set(gpus)) == 2
    assert "to stderr" in r.stderr
    jobs = net.cli_json(user, "jobs")
    job = net.cli_json(user, "jobs", "show", jobs[0]["id"])
    assert job["state"] == "failed" and job["exit_code"] == 7
    assert job["node_id"] and len(job["gpu_ids"]) == 2
    assert job["started_at"] and job["finished_at"]
    states = [e["to"] for e in net.cli_json(user, "jobs", "events", job["id"])]
    assert states == ["queued", "assigned", "running", "failed"]

    ok = net.cli(user, "run", "--gpus", "1", "--", "python3", "-c", "print('hi there')")
    assert ok.returncode == 0 and "hi there" in ok.stdout, ok.stderr


def test_impossible_job_is_rejected_with_reason(calm: Network) -> None:
    net = calm
    r = net.cli(net.user, "run", "--gpus", "3", "--", "true")
    assert r.returncode == 1
    assert "can never run" in r.stderr and "Traceback" not in r.stderr


def test_kill9_agent_requeues_job_and_rejects_late_report(net: Network, tmp_path: Path) -> None:
    user = net.user
    spec = _job_file(
        tmp_path,
        """
        name: survivor
        # the first attempt would run for a minute: only a re-queue lets the job finish
        command:
          - python3
          - -c
          - |
            import os, time
            print('start', flush=True)
            time.sleep(60 if os.environ['GPUNET_ATTEMPT_NUMBER'] == '1' else 0.5)
            print('done')
        max_retries: 2
    """,
    )
    job_id = net.cli_json(user, "submit", str(spec))["id"]
    first = wait_for(
        lambda: (j := net.job(user, job_id))["state"] == "running" and j,
        20,
        "the job to run",
    )
    node = first["node_id"]
    victim = next(n for n, _ in net.agents.items() if net.agent_credentials(n)["node_id"] == node)
    creds = net.agent_credentials(victim)
    old_attempt = first["attempts"][-1]
    net.agents[victim].kill9()

    done = wait_for(
        lambda: (j := net.job(user, job_id))["state"] == "succeeded" and j,
        40,
        "the job to finish elsewhere",
    )
    assert done["node_id"] != node
    assert [a["state"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["retries_used"] == 1
    # the killed attempt's late failure is refused: the fencing token is stale
    late = f"{net.url}/v1/agent/attempts/{old_attempt['id']}/finished"
    bearer = {"Authorization": f"Bearer {creds['token']}"}
    r = httpx.post(late, json={"fencing_token": 1, "exit_code": 1}, headers=bearer, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "stale_fencing_token"
    # a late success after the retry ran is recorded as a discarded duplicate
    r = httpx.post(late, json={"fencing_token": 1, "exit_code": 0}, headers=bearer, timeout=10)
    assert r.status_code == 200, r.text
    assert net.cli_json(user, "jobs", "show", job_id)["state"] == "succeeded"
    events = net.cli_json(user, "jobs", "events", job_id)
    assert any("duplicate discarded" in e["reason"] for e in events)
    nodes = {n["id"]: n for n in net.cli_json(net.admin, "nodes")}
    assert nodes[node]["status"] == "offline"


def test_coordinator_restart_loses_nothing(net: Network, tmp_path: Path) -> None:
    user = net.user
    spec = _job_file(
        tmp_path,
        """
        name: across-restart
        command: ["python3", "-c", "import time; print('a', flush=True); time.sleep(4); print('b')"]
    """,
    )
    job_id = net.cli_json(user, "submit", str(spec))["id"]
    wait_for(
        lambda: net.job(user, job_id)["state"] == "running",
        20,
        "the job to run",
    )
    net.stop_coordinator()
    net.start_coordinator()
    job = wait_for(
        lambda: net.job(user, job_id)["state"] in ("succeeded", "failed"),
        40,
        "the job to finish",
    )
    job = net.cli_json(user, "jobs", "show", job_id)  # polled on the API; asserted as shown
    assert job["state"] == "succeeded" and job["exit_code"] == 0
    assert [a["state"] for a in job["attempts"]] == ["succeeded"]
    out = net.cli(user, "logs", job_id).stdout
    assert out.split() == ["a", "b"]


def test_cancel_kills_the_whole_process_group(calm: Network, tmp_path: Path) -> None:
    net = calm
    user = net.user
    marker = f"forker-{tmp_path.name}"
    spec = _job_file(
        tmp_path,
        f"""
        name: forker
        command: "sh -c 'while true; do sleep 0.1; done' {marker} & wait"
    """,
    )
    job_id = net.cli_json(user, "submit", str(spec))["id"]
    # jobs cannot write to the host (sandboxed agents): watch the child in the host's /proc
    child = wait_for(lambda: host_pids_with(marker), 20, "the child to run")[0]
    # `gpunet status` shows the running job and the fleet around it
    st = net.cli_json(user, "status")
    assert st["role"] == "consumer" and st["version"]
    assert [(j["id"], j["state"]) for j in st["jobs"]] == [(job_id, "running")]
    assert st["fleet"]["nodes_online"] == 2 and st["fleet"]["gpus"].get("busy") == 1
    text = net.cli(user, "status")
    assert text.returncode == 0 and job_id in text.stdout and "2/2 nodes online" in text.stdout
    r = net.cli(user, "cancel", job_id)
    assert r.returncode == 0, r.stderr
    job = wait_for(
        lambda: net.job(user, job_id)["attempts"][-1]["state"] == "cancelled",
        20,
        "the attempt to stop",
    )
    job = net.cli_json(user, "jobs", "show", job_id)
    assert job["state"] == "cancelled"
    wait_for(lambda: not alive(child), 5, "the cancelled job's child to be gone")


def test_tenants_are_isolated_through_the_cli(calm: Network, tmp_path: Path) -> None:
    net = calm
    alice = net.user
    bob = net.token("consumer", "bob")
    spec = _job_file(
        tmp_path,
        """
        command: ["python3", "-c", "print('secret')"]
    """,
    )
    job_id = net.cli_json(alice, "submit", str(spec))["id"]
    wait_for(
        lambda: net.job(alice, job_id)["state"] == "succeeded",
        20,
        "the job to finish",
    )
    assert all(j["id"] != job_id for j in net.cli_json(bob, "jobs"))
    for args in (
        ["jobs", "show", job_id],
        ["logs", job_id],
        ["cancel", job_id],
        ["jobs", "events", job_id],
        ["jobs", "why", job_id],
    ):
        r = net.cli(bob, *args)
        assert r.returncode == 1 and "no job" in r.stderr, (args, r.stdout, r.stderr)
        assert "secret" not in r.stdout
    assert "secret" in net.cli(alice, "logs", job_id).stdout


@only_on("sqlite")  # the agent stops it
def test_agent_cut_off_past_its_lease_stops_its_attempt(net: Network, tmp_path: Path) -> None:
    user = net.user
    marker = f"fenced-{tmp_path.name}"
    spec = _job_file(
        tmp_path,
        f"""
        name: fenced
        command:
          - python3
          - -c
          - |
            import os, time
            if os.environ['GPUNET_ATTEMPT_NUMBER'] != '1':
                raise SystemExit(0)
            while True:
                time.sleep(0.1)
          - {marker}
        max_retries: 1
        """,
    )
    job_id = net.cli_json(user, "submit", str(spec))["id"]
    pid = wait_for(lambda: host_pids_with(marker), 20, "the job to run")[0]
    net.stop_coordinator()  # the agent can no longer renew its lease (3 s)
    wait_for(lambda: not alive(pid), 15, "the agent to stop the attempt it cannot renew")
    net.start_coordinator()
    wait_for(lambda: net.job(user, job_id)["state"] == "succeeded", 40, "the job to be re-run")
    job = net.cli_json(user, "jobs", "show", job_id)
    assert [a["state"] for a in job["attempts"]] == ["lost", "succeeded"]
