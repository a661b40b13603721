"""End to end: jobs that keep their progress in $GPUNET_CHECKPOINT_DIR survive the loss of
their node (periodic uploads) and ask to be run again with exit 85 (upload on exit). Real
processes; agents use whatever isolation the host allows. Each test on one database (the
resume on PostgreSQL, from S3 on SQLite): the integration tests cover the store on both."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import only_on
from tests.e2e.procs import Network, two_agent_network, wait_for
from tests.s3server import S3Server, s3_server

pytestmark = pytest.mark.e2e

# counts steps into its checkpoint directory, the count written atomically (a temporary name,
# then a rename); resumes from the count it finds. The first attempt takes 0.2 s a step (it
# must still run when its first periodic upload is done), a later one 0.02 s: nothing waits
# on it but the test
COUNTER = textwrap.dedent("""
    import os, sys, time
    path = os.path.join(os.environ["GPUNET_CHECKPOINT_DIR"], "count")
    total = int(sys.argv[1])
    n = int(open(path).read()) if os.path.exists(path) else 0
    attempt = os.environ['GPUNET_ATTEMPT_NUMBER']
    print(f"attempt {attempt} resumes at {n}", flush=True)
    while n < total:
        time.sleep(0.2 if attempt == "1" else 0.02)
        n += 1
        with open(path + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(path + ".tmp", path)
    print(f"final count {n}", flush=True)
""")


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    with two_agent_network(tmp_path, db_url, "1xA100-80GB", lease_timeout=3.0) as n:
        yield n


def _submit(net: Network, tmp_path: Path, spec: str, program: str) -> str:
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.py").write_text(program)
    f = tmp_path / "job.yaml"
    f.write_text(textwrap.dedent(spec))
    return str(net.cli_json(net.user, "submit", str(f), "--workdir", str(work))["id"])


def _output(net: Network, job_id: str) -> str:
    r = net.cli(net.user, "logs", job_id)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def s3net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Network, str]]:
    """The network with its coordinator on ``--checkpoint-store s3://...``: moto's S3 server
    (a real process speaking S3's API), on SQLite (the store does not depend on the database)."""
    with s3_server(tmp_path / "moto.log") as srv:
        for k, v in srv.env().items():  # boto3's standard variables, for the coordinator
            monkeypatch.setenv(k, v)
        srv.client().create_bucket(Bucket="ckpts")  # type: ignore[attr-defined]
        with two_agent_network(
            tmp_path,
            f"sqlite:///{tmp_path / 'gpunet.db'}",
            "1xA100-80GB",
            lease_timeout=3.0,
            server_args=["--checkpoint-store", "s3://ckpts/net1"],
        ) as n:
            yield n, srv.endpoint


@only_on("postgres")  # S3's: SQLite
def test_job_resumes_from_its_checkpoint_after_its_node_is_killed(
    net: Network, tmp_path: Path
) -> None:
    _resumes_elsewhere_after_its_node_is_killed(net, tmp_path)


def test_job_resumes_from_a_checkpoint_kept_in_an_s3_bucket(
    s3net: tuple[Network, str], tmp_path: Path
) -> None:
    net, _ = s3net
    _resumes_elsewhere_after_its_node_is_killed(net, tmp_path)
    s3 = S3Server(s3net[1]).client()
    names = [o["Key"] for o in s3.list_objects_v2(Bucket="ckpts")["Contents"]]  # type: ignore[attr-defined]
    assert any(k.startswith("net1/objects/") for k in names), names
    assert not (tmp_path / "home" / "checkpoints" / "objects").exists()


def _resumes_elsewhere_after_its_node_is_killed(net: Network, tmp_path: Path) -> None:
    total = 150
    job_id = _submit(
        net,
        tmp_path,
        f"""
        name: counter
        command: ["python3", "job.py", "{total}"]
        checkpoint: {{interval_s: 10}}
        max_retries: 2
        """,
        COUNTER,
    )
    wait_for(
        lambda: net.job(net.user, job_id)["state"] == "running",
        30,
        "the job to run",
    )
    wait_for(lambda: net.api(net.user, f"/v1/jobs/{job_id}/checkpoints"), 30, "a checkpoint")
    saved = net.cli_json(net.user, "jobs", "checkpoints", job_id)
    assert saved[0]["files"] == 1
    # the node that runs the attempt which saved it
    job = net.cli_json(net.user, "jobs", "show", job_id)
    node = next(a["node_id"] for a in job["attempts"] if a["id"] == saved[0]["attempt_id"])
    victim = next(n for n in net.agents if net.agent_credentials(n)["node_id"] == node)
    net.agents[victim].kill9()

    wait_for(
        lambda: net.job(net.user, job_id)["state"] == "succeeded",
        90,
        "the job to finish on the other node",
    )
    done = net.cli_json(net.user, "jobs", "show", job_id)
    assert done["attempts"][-1]["node_id"] != node, done["attempts"]
    assert [a["state"] for a in done["attempts"]] == ["lost", "succeeded"], done["attempts"]
    out = _output(net, job_id)
    resumed = [int(m) for m in re.findall(r"attempt 2 resumes at (\d+)", out)]
    assert len(resumed) == 1 and 0 < resumed[0] < total, out
    assert re.findall(r"final count (\d+)", out) == [str(total)], out
    assert "restored: 1 files" in out


@only_on("sqlite")  # the agent's upload on exit
def test_exit_85_checkpoints_and_runs_again(net: Network, tmp_path: Path) -> None:
    program = textwrap.dedent("""
        import os, sys
        path = os.path.join(os.environ["GPUNET_CHECKPOINT_DIR"], "count")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write("5")
            print("saved 5, asking to run again", flush=True)
            sys.exit(85)
        print(f"continued from {open(path).read()}", flush=True)
    """)
    job_id = _submit(
        net,
        tmp_path,
        """
        name: again
        command: ["python3", "job.py"]
        max_retries: 0
        """,
        program,
    )
    wait_for(
        lambda: net.job(net.user, job_id)["state"] == "succeeded",
        60,
        "the job to run again and succeed",
    )
    done = net.cli_json(net.user, "jobs", "show", job_id)
    assert [a["state"] for a in done["attempts"]] == ["preempted", "succeeded"]
    assert done["retries_used"] == 0
    out = _output(net, job_id)
    assert "continued from 5" in out, out
    [ck] = net.cli_json(net.user, "jobs", "checkpoints", job_id)
    assert ck["attempt_id"] == done["attempts"][0]["id"]


@only_on("sqlite")  # the agent's upload
def test_a_stopped_attempt_uploads_what_it_saved_on_sigterm(net: Network, tmp_path: Path) -> None:
    program = textwrap.dedent("""
        import os, signal, sys, time
        path = os.path.join(os.environ["GPUNET_CHECKPOINT_DIR"], "state")

        def save_and_exit(*_):
            with open(path + ".tmp", "w") as f:
                f.write("saved on SIGTERM")
            os.replace(path + ".tmp", path)
            sys.exit(0)

        signal.signal(signal.SIGTERM, save_and_exit)
        with open(path, "w") as f:
            f.write("running")
        print("ready", flush=True)
        time.sleep(120)
    """)
    job_id = _submit(net, tmp_path, 'name: stopped\ncommand: ["python3", "job.py"]\n', program)
    wait_for(lambda: "ready" in net.output(net.user, job_id), 30, "the job to start")
    assert net.cli(net.user, "cancel", job_id).returncode == 0
    wait_for(lambda: net.api(net.user, f"/v1/jobs/{job_id}/checkpoints"), 30, "the final upload")
    [ck] = net.cli_json(net.user, "jobs", "checkpoints", job_id)
    assert ck["files"] == 1 and ck["size"] == len("saved on SIGTERM")
