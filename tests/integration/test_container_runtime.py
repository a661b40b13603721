"""Real containers with podman, from a tiny image built here from busybox (no registry).

Skipped, with the measured error in the reason, where podman is absent or cannot run a
container on this machine (also under CI: run pytest with ``-rs`` to see why).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpunet.agent.sandbox.container import (
    ContainerJob,
    RuntimeInfo,
    build_run_argv,
    cleanup_leftovers,
    container_name,
    kill,
    list_agent_containers,
    prepare_workdir,
    read_host_limits,
    runtime_env,
)
from tests.container_image import IMAGE, podman_with_test_image


@pytest.fixture(scope="module")
def podman() -> RuntimeInfo:
    return podman_with_test_image()


@pytest.fixture
def agent_key(podman: RuntimeInfo) -> Iterator[str]:
    key = f"test-{uuid.uuid4().hex[:8]}"
    yield key
    cleanup_leftovers(podman, key)


def make_job(agent_key: str, workdir: Path, command: list[str], **kw: object) -> ContainerJob:
    prepare_workdir(workdir)
    return ContainerJob(
        attempt_id=f"att-{uuid.uuid4().hex[:8]}",
        agent_key=agent_key,
        image=IMAGE,
        command=command,
        workdir=workdir,
        pids_limit=int(kw.pop("pids_limit", 64)),  # type: ignore[call-overload]
        memory_bytes=256 << 20,
        cpus=1.0,
        **kw,  # type: ignore[arg-type]
    )


def run(runtime: RuntimeInfo, job: ContainerJob) -> subprocess.CompletedProcess[str]:
    argv = build_run_argv(runtime, job, host=read_host_limits(), cdi=False)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=runtime_env(runtime)
    )


def test_job_reads_and_writes_its_workdir_as_non_root(
    podman: RuntimeInfo, agent_key: str, tmp_path: Path
) -> None:
    (tmp_path / "input.txt").write_text("hello from the owner\n")
    script = "cat input.txt > output.txt && id -u >> output.txt && echo $GREETING"
    job = make_job(agent_key, tmp_path, ["sh", "-c", script], env={"GREETING": "hi"})
    done = run(podman, job)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi\n"
    assert (tmp_path / "output.txt").read_text() == "hello from the owner\n65534\n"


def test_root_is_read_only_and_no_capabilities(
    podman: RuntimeInfo, agent_key: str, tmp_path: Path
) -> None:
    script = "touch /etc/x 2>&1; grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status"
    done = run(podman, make_job(agent_key, tmp_path, ["sh", "-c", script]))
    assert "Read-only file system" in done.stdout
    assert "CapEff:\t0000000000000000" in done.stdout
    assert "NoNewPrivs:\t1" in done.stdout
    assert "Seccomp:\t2" in done.stdout  # the default seccomp filter is on


def test_network_none_leaves_only_loopback(
    podman: RuntimeInfo, agent_key: str, tmp_path: Path
) -> None:
    done = run(podman, make_job(agent_key, tmp_path, ["ls", "/sys/class/net"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lo"]


def test_host_files_are_not_visible(podman: RuntimeInfo, agent_key: str, tmp_path: Path) -> None:
    secret = tmp_path.parent / f"host-secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("owner only\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    try:
        script = f"test -e {secret} && echo SEEN || echo ABSENT; cat /etc/hostname"
        done = run(podman, make_job(agent_key, workdir, ["sh", "-c", script]))
    finally:
        secret.unlink()
    assert done.returncode == 0, done.stderr
    seen, hostname = done.stdout.split()
    assert seen == "ABSENT"
    assert hostname != socket.gethostname()


def _spawn_sleeps(podman: RuntimeInfo, agent_key: str, workdir: Path, limit: int) -> str:
    script = "for i in $(seq 1 24); do sleep 2 & done 2>&1; wait"
    done = run(podman, make_job(agent_key, workdir, ["sh", "-c", script], pids_limit=limit))
    return done.stdout + done.stderr


def test_pids_limit_holds(podman: RuntimeInfo, agent_key: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert "can't fork" in _spawn_sleeps(podman, agent_key, tmp_path / "a", limit=8)
    # the same script fits under a larger limit: the limit, not the script, stopped it
    assert "can't fork" not in _spawn_sleeps(podman, agent_key, tmp_path / "b", limit=64)


def _start_sleeper(podman: RuntimeInfo, job: ContainerJob) -> subprocess.Popen[bytes]:
    argv = build_run_argv(podman, job, host=read_host_limits(), cdi=False)
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=runtime_env(podman)
    )
    deadline = time.monotonic() + 30
    while container_name(job.attempt_id) not in list_agent_containers(podman, job.agent_key):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the container did not start within 30 s")
        time.sleep(0.1)
    return proc


def test_kill_stops_a_running_container(
    podman: RuntimeInfo, agent_key: str, tmp_path: Path
) -> None:
    job = make_job(agent_key, tmp_path, ["sleep", "120"])
    proc = _start_sleeper(podman, job)
    try:
        assert kill(podman, container_name(job.attempt_id))
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()


def test_cleanup_removes_a_leftover_container(
    podman: RuntimeInfo, agent_key: str, tmp_path: Path
) -> None:
    job = make_job(agent_key, tmp_path, ["sleep", "120"])
    proc = _start_sleeper(podman, job)
    try:
        removed = cleanup_leftovers(podman, agent_key)
        assert removed == [container_name(job.attempt_id)]
        assert list_agent_containers(podman, agent_key) == []
        assert proc.wait(timeout=30) != 0
    finally:
        proc.kill()
