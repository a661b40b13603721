"""The container run argv: isolation flags, limits, network, GPUs, and version warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpunet.agent.sandbox.container import (
    ContainerJob,
    HostLimits,
    RuntimeInfo,
    build_run_argv,
    cdi_spec_present,
    container_name,
    detect_docker,
    detect_runtimes,
    nvidia_ctk_warning,
    runc_warning,
)

PODMAN = RuntimeInfo("podman", "4.3.1", True, "ok", "/usr/bin/podman", "runc", cdi=True)
DOCKER = RuntimeInfo("docker", "27.0.1", True, "ok", "/usr/bin/docker")
HOST = HostLimits(nofile_hard=20000, nproc_hard=96365, pid_max=32768)


def job(**kw: object) -> ContainerJob:
    base: dict[str, object] = {
        "attempt_id": "att-1",
        "agent_key": "node-7",
        "image": "localhost/train:1",
        "command": ["python", "train.py"],
        "workdir": Path("/var/lib/gpunet/attempts/att-1"),
        "env": {"SEED": "3"},
    }
    base.update(kw)
    return ContainerJob(**base)  # type: ignore[arg-type]


def flags(argv: list[str]) -> list[str]:
    """The options before the image (after ``--`` comes the image and the job's command)."""
    return argv[: argv.index("--")]


def test_isolation_flags_and_command_after_the_image() -> None:
    argv = build_run_argv(PODMAN, job(), host=HOST, cdi=False)
    assert argv[:4] == ["/usr/bin/podman", "--runtime", "runc", "run"]
    f = flags(argv)
    for expected in (
        "--rm",
        "--pull=never",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--workdir=/workspace",
        "--volume=/var/lib/gpunet/attempts/att-1:/workspace:rw,Z",
        "--user=65534:65534",
        "--name=gpunet-att-1",
        "--label=gpunet.attempt=att-1",
        "--label=gpunet.agent=node-7",
        "--http-proxy=false",
    ):
        assert expected in f, expected
    assert any(a.startswith("--tmpfs=/tmp:") for a in f)
    assert argv[argv.index("--") + 1 :] == ["localhost/train:1", "python", "train.py"]
    joined = " ".join(argv)
    assert "--privileged" not in joined
    assert "seccomp=unconfined" not in joined
    assert "--env=SEED=3" in f


def test_env_is_only_what_was_passed() -> None:
    f = flags(build_run_argv(PODMAN, job(env={"A": "1"}), host=HOST, cdi=False))
    assert [a for a in f if a.startswith("--env")] == ["--env=A=1"]
    assert "--env-host" not in f


def test_limits_clamped_to_the_host() -> None:
    j = job(pids_limit=64, memory_bytes=2 << 30, cpus=1.5, nofile=1 << 20)
    f = flags(build_run_argv(PODMAN, j, host=HOST, cdi=False))
    assert "--pids-limit=64" in f
    assert f"--memory={2 << 30}" in f and f"--memory-swap={2 << 30}" in f
    assert "--cpus=1.5" in f
    # above the caller's hard limits the OCI runtime's setrlimit fails without CAP_SYS_RESOURCE
    assert "--ulimit=nofile=20000:20000" in f
    assert "--ulimit=nproc=32768:32768" in f


def test_network_is_none_or_private_never_the_hosts() -> None:
    assert "--network=none" in flags(build_run_argv(PODMAN, job(), host=HOST, cdi=False))
    f = flags(build_run_argv(PODMAN, job(network="private"), host=HOST, cdi=False))
    assert "--network=bridge" in f and "--network=none" not in f
    for network in ("private", "none", "host"):
        argv = build_run_argv(PODMAN, job(network=network), host=HOST, cdi=False)
        assert "--network=host" not in flags(argv)


def test_gpus_by_cdi_name() -> None:
    f = flags(build_run_argv(PODMAN, job(gpus=[2, 5]), host=HOST, cdi=True))
    devices = [a for a in f if a.startswith("--device")]
    assert devices == ["--device=nvidia.com/gpu=2", "--device=nvidia.com/gpu=5"]
    assert "--env=CUDA_VISIBLE_DEVICES=0,1" in f


def test_gpus_by_device_node_without_cdi() -> None:
    f = flags(build_run_argv(DOCKER, job(gpus=[1], device_minors={1: 3}), host=HOST, cdi=False))
    devices = [a for a in f if a.startswith("--device")]
    assert devices == [
        "--device=/dev/nvidia3",
        "--device=/dev/nvidiactl",
        "--device=/dev/nvidia-uvm",
    ]
    assert not any("nvidia0" in a for a in f)
    assert "--http-proxy=false" not in f  # a podman-only flag
    assert f[:2] == ["/usr/bin/docker", "run"]


def test_no_gpus_no_devices() -> None:
    f = flags(build_run_argv(PODMAN, job(), host=HOST, cdi=True))
    assert not any(a.startswith("--device") for a in f)
    assert not any("CUDA_VISIBLE_DEVICES" in a for a in f)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"user": (0, 0)}, "user"),
        ({"user": (1000, 0)}, "user"),
        ({"image": "--privileged"}, "image"),
        ({"command": []}, "command"),
        ({"pids_limit": 0}, "pids_limit"),
        ({"workdir": Path("rel/dir")}, "workdir"),
        ({"workdir": Path("/a:/etc")}, "workdir"),
        ({"env": {"A=B": "1"}}, "env"),
        ({"gpus": [-1]}, "gpus"),
    ],
)
def test_refuses_bad_jobs_naming_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        build_run_argv(PODMAN, job(**change), host=HOST, cdi=False)


def test_container_name_is_safe() -> None:
    assert container_name("a/b c;d") == "gpunet-a-b-c-d"


def test_cdi_spec_present(tmp_path: Path) -> None:
    assert not cdi_spec_present([tmp_path])
    (tmp_path / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    assert cdi_spec_present([tmp_path])


def test_runc_warning() -> None:
    old = "runc version 1.1.11\ncommit: v1.1.11-0-g4bccb38\nspec: 1.0.2-dev\n"
    w = runc_warning(old)
    assert w is not None and "CVE-2024-21626" in w and "1.1.11" in w
    assert runc_warning("runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\n") is None
    assert runc_warning("runc version 1.2.0\n") is None
    # Debian 12's build carries the fix as a patch
    assert runc_warning("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\n") is None
    assert runc_warning("runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n") is not None


def test_nvidia_ctk_warning() -> None:
    w = nvidia_ctk_warning("NVIDIA Container Toolkit CLI version 1.16.1\ncommit: abc\n")
    assert w is not None and "CVE-2024-0132" in w
    assert nvidia_ctk_warning("NVIDIA Container Toolkit CLI version 1.16.2\n") is None
    assert nvidia_ctk_warning("NVIDIA Container Toolkit CLI version 1.17.0\n") is None


def _fake_tool(bindir: Path, name: str, script: str) -> None:
    tool = bindir / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


def test_docker_client_without_daemon_does_not_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tool(
        tmp_path,
        "docker",
        'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2\nexit 1\n',
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    info = detect_docker(timeout_s=5)
    assert not info.works
    assert "Cannot connect to the Docker daemon" in info.reason


def test_docker_with_daemon_reports_version_cdi_and_runc_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info_json = '{"ServerVersion":"27.3.1","DefaultRuntime":"runc","CDISpecDirs":["/etc/cdi"]}'
    _fake_tool(tmp_path, "docker", f"echo '{info_json}'\n")
    _fake_tool(tmp_path, "runc", 'echo "runc version 1.1.7"\necho "commit: v1.1.7-0-g860f061"\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    info = detect_docker(timeout_s=5)
    assert info.works and info.version == "27.3.1" and info.cdi
    assert len(info.warnings) == 1 and "CVE-2024-21626" in info.warnings[0]


def test_missing_runtimes_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = detect_runtimes(timeout_s=5)
    assert [(r.name, r.works, r.reason) for r in found] == [
        ("podman", False, "podman not found on PATH"),
        ("docker", False, "docker not found on PATH"),
    ]
