"""End to end: a job on two nodes runs a real `torchrun` (torch's CPU build, gloo) on three
agents with simulated GPUs; it all-reduces a tensor and trains a tiny model, rank 0 saving its
checkpoint. Killing one member's agent with -9 stops the other member within seconds; the job
is re-queued as a whole and completes on the two nodes left, from its checkpoint."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing, only_on
from tests.e2e.procs import Network, three_agents, wait_for

pytestmark = pytest.mark.e2e

TRAIN = textwrap.dedent("""
    import os, sys, time
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    more, pause = int(sys.argv[1]), float(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    print(f"allreduce rank={rank} world={world} sum={t.item():g}", flush=True)

    path = os.path.join(os.environ["GPUNET_CHECKPOINT_DIR"], "state.pt")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    step = 0
    if os.path.exists(path):  # every member restores the job's checkpoint
        state = torch.load(path)
        model.load_state_dict(state["model"])
        step = state["step"]
    attempt = int(os.environ["GPUNET_ATTEMPT_NUMBER"])
    print(f"rank {rank} attempt {attempt} resumes at {step}", flush=True)
    # the first attempt trains until a member is killed; a later one `more` steps past its
    # checkpoint (the test never waits on a race between the kill and the end)
    total = step + more if attempt > 1 else 10**6
    ddp = DDP(model)
    while step < total:
        x = torch.randn(16, 4)
        loss = ((ddp(x) - x.sum(1, keepdim=True)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if rank == 0:  # rank 0's directory is the job's checkpoint
            torch.save({"model": model.state_dict(), "step": step}, path + ".tmp")
            os.replace(path + ".tmp", path)
        print(f"rank {rank} step {step} loss {loss.item():.4f}", flush=True)
        time.sleep(pause)
    dist.destroy_process_group()
    print(f"rank {rank} done at {step}", flush=True)
""")

COMMAND = (
    "torchrun --nnodes $NNODES --node-rank $NODE_RANK --nproc-per-node $GPUS_PER_NODE "
    "--master-addr $MASTER_ADDR --master-port $MASTER_PORT train.py {more} {pause}"
)


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    try:
        import torch  # noqa: F401
    except ImportError:
        missing("torch (pip install torch==2.13.0: the CPU build)")
    with three_agents(tmp_path, db_url) as n:
        yield n


def _show(net: Network, job_id: str) -> dict[str, Any]:
    return dict(net.cli_json(net.user, "jobs", "show", job_id))


def _members(job: dict[str, Any], number: int) -> list[dict[str, Any]]:
    return sorted((a for a in job["attempts"] if a["number"] == number), key=lambda a: a["rank"])


@only_on("postgres")  # Ray's gang runs on SQLite
def test_a_torchrun_gang_survives_the_loss_of_a_member(net: Network, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(TRAIN)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        textwrap.dedent(f"""
            name: ddp
            command: "{COMMAND.format(more=10, pause=0.3)}"
            resources: {{nodes: 2, gpus: 1}}
            env: {{OMP_NUM_THREADS: "1"}}
            checkpoint: {{interval_s: 10}}
            max_retries: 2
        """)
    )
    job_id = str(net.cli_json(net.user, "submit", str(spec), "--workdir", str(work))["id"])

    def running() -> dict[str, Any] | None:
        j = net.job(net.user, job_id)
        assert j["state"] not in ("failed", "succeeded", "cancelled"), j
        return j if j["state"] == "running" else None

    job = wait_for(running, 60, "both members to run")
    first = _members(job, 1)
    assert [a["rank"] for a in first] == [0, 1] and first[0]["node_id"] != first[1]["node_id"]

    def both_ranks_logged() -> bool:  # each rank prints its number (the CLI's prefix below)
        out = net.output(net.user, job_id)
        return all(f"rank {r} step 2 " in out for r in (0, 1))

    wait_for(both_ranks_logged, 60, "both ranks' training output")
    out = net.cli(net.user, "logs", job_id).stdout
    assert "[rank 0] allreduce rank=0 world=2 sum=3" in out, out
    assert "[rank 1] allreduce rank=1 world=2 sum=3" in out, out
    only1 = net.cli(net.user, "logs", job_id, "--rank", "1").stdout
    assert "rank 1 step" in only1 and "rank 0 step" not in only1, only1

    wait_for(lambda: net.api(net.user, f"/v1/jobs/{job_id}/checkpoints"), 30, "rank 0's checkpoint")
    assert net.cli_json(net.user, "jobs", "checkpoints", job_id)
    victim_node = first[1]["node_id"]
    victim = next(n for n in net.agents if net.agent_credentials(n)["node_id"] == victim_node)
    net.agents[victim].kill9()
    killed = time.time()

    def members_ended() -> dict[str, Any] | None:
        j = net.job(net.user, job_id)
        ended = all(m["state"] not in ("assigned", "running", "stopping") for m in _members(j, 1))
        return j if ended else None

    job = wait_for(members_ended, 30, "the other member to stop and the victim to be lost")
    head, lost = _members(job, 1)
    # by the coordinator's clock (this host's): the stop confirmed, not when a poll saw it
    stopped_in = datetime.fromisoformat(head["finished_at"]).timestamp() - killed
    assert stopped_in <= 10, stopped_in
    assert lost["state"] == "lost", job["attempts"]
    if head["state"] == "cancelled":  # stopped by the coordinator when rank 1 was declared lost
        assert "rank 1" in head["reason"] and "lost" in head["reason"], head
    else:  # its collective broke first (rank 1's processes die with their agent): it failed,
        # and the job still went back to the queue because its peer was lost
        assert head["state"] == "failed" and head["exit_code"] != 0, head

    def done() -> dict[str, Any] | None:
        j = net.job(net.user, job_id)
        assert j["state"] not in ("failed", "cancelled"), j
        return j if j["state"] == "succeeded" else None

    wait_for(done, 90, "the job to complete on the two nodes left")
    job = _show(net, job_id)
    second = _members(job, 2)
    assert {a["node_id"] for a in second}.isdisjoint({victim_node})
    assert [a["state"] for a in second] == ["succeeded", "succeeded"]
    out = net.cli(net.user, "logs", job_id).stdout
    resumed = [int(m) for m in re.findall(r"rank 0 attempt 2 resumes at (\d+)", out)]
    assert len(resumed) == 1 and resumed[0] > 0, out
    # every member restored the job's checkpoint: both ranks go on from the same step
    assert f"[rank 1] rank 1 attempt 2 resumes at {resumed[0]}" in out, out
    done = resumed[0] + 10
    assert f"[rank 0] rank 0 done at {done}" in out, out
    assert f"[rank 1] rank 1 done at {done}" in out, out


RAY_DRIVER = textwrap.dedent("""
    import ray

    ray.init()  # RAY_ADDRESS: the gang's head

    @ray.remote(num_gpus=1)
    def where() -> str:
        import time
        time.sleep(1)  # both run at once: one per node's GPU
        return ray.get_runtime_context().get_node_id()

    nodes = ray.get([where.remote() for _ in range(2)])
    alive = sum(n["Alive"] for n in ray.nodes())
    gpus = ray.cluster_resources().get("GPU")
    print(f"ray nodes={alive} distinct={len(set(nodes))} gpus={gpus:g}", flush=True)
""")


@pytest.fixture
def ray_net(tmp_path: Path) -> Iterator[Network]:
    """Three agents for Ray (the store plays no part in it: SQLite only)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        missing("ray (pip install gpunet[ray]; the dev extra brings it)")
    with three_agents(tmp_path, f"sqlite:///{tmp_path / 'gpunet.db'}") as n:
        yield n


def test_a_ray_gang_runs_a_remote_function_on_each_node(ray_net: Network, tmp_path: Path) -> None:
    net = ray_net
    work = tmp_path / "work"
    work.mkdir()
    (work / "driver.py").write_text(RAY_DRIVER)
    r = net.cli(
        net.user,
        "run",
        "--nodes",
        "2",
        "--gpus",
        "1",
        "--launcher",
        "ray",
        "--workdir",
        str(work),
        "--max-retries",
        "0",
        "--",
        "python3",
        "driver.py",
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[rank 0] ray nodes=2 distinct=2 gpus=2" in r.stdout, r.stdout + r.stderr
    jobs = net.cli_json(net.user, "jobs")
    job = _show(net, jobs[0]["id"])
    assert job["state"] == "succeeded"
    head, worker = _members(job, 1)
    assert head["state"] == "succeeded" and worker["state"] in ("cancelled", "succeeded")

    def ray_gone() -> bool:  # the members' Ray processes ended with their attempts
        return not [p for p in host_pids_with_prefix("/tmp/gpunet-ray-att")]

    wait_for(ray_gone, 20, "the gang's Ray processes to end")
    for a in (head, worker):  # and its files
        wait_for(
            lambda a=a: not Path(f"/tmp/gpunet-ray-{a['id']}").exists(), 20, "Ray's files removed"
        )


def host_pids_with_prefix(prefix: str) -> list[int]:
    """Pids of processes one of whose arguments contains ``prefix``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if prefix.encode() in args:
            out.append(int(entry.name))
    return out
