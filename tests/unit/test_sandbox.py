"""The job sandbox's pure parts: bubblewrap argv, environment from scratch, uid pool, cgroup
layout and limits (on a fake cgroup tree)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpunet.agent.sandbox.bwrap import HostView, build_argv, gpu_devices
from gpunet.agent.sandbox.cgroups import AttemptCgroup, CgroupTree, Limits, agent_parent, leftovers
from gpunet.agent.sandbox.env import job_env
from gpunet.agent.sandbox.launch import GiB, effective_limits
from gpunet.agent.sandbox.uids import UidPool, UidPoolExhausted

HOST = HostView(
    system={"/usr": None, "/etc": None, "/bin": "usr/bin", "/lib": "usr/lib", "/opt": None},
    dev=frozenset({"null", "nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm"}),
)
ATTEMPT = {"job_id": "j1", "attempt_id": "a1", "number": 2}


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_argv_binds_the_system_read_only_and_the_workdir_alone() -> None:
    argv = build_argv(
        ["python3", "x.py"],
        workdir="/agent/work/a1",
        host=HOST,
        gpu_indices=[],
        ro_paths=["/venv", "/root/.pyenv/versions/3.11", "/usr/lib/python3"],
        uid=64001,
    )
    ro = pairs(argv, "--ro-bind")
    assert ("/usr", "/usr") in ro and ("/etc", "/etc") in ro and ("/opt", "/opt") in ro
    assert ("/venv", "/venv") in ro and ("/root/.pyenv/versions/3.11",) * 2 in ro
    # under /usr already: not bound twice
    assert ("/usr/lib/python3", "/usr/lib/python3") not in ro
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin"), ("usr/lib", "/lib")]
    assert pairs(argv, "--bind") == [("/agent/work/a1", "/workspace")]
    # the parents of an extra bind are made traversable, but /root itself is not bound
    assert ("0755", "--dir") in [
        (argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--perms"
    ]
    assert "/root" in argv and ("/root", "/root") not in ro
    assert not any(a.startswith("/home") for a in argv)
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"):
        assert flag in argv
    assert "--die-with-parent" in argv and "--new-session" in argv
    assert "--unshare-net" not in argv
    sep = argv.index("--")
    assert argv[sep + 1 : sep + 3] == ["/usr/bin/setpriv", "--reuid=64001"]
    assert "--no-new-privs" in argv and "--clear-groups" in argv
    assert argv[-2:] == ["python3", "x.py"]


def test_argv_without_root_uses_a_user_namespace_and_no_uid_drop() -> None:
    argv = build_argv(["true"], workdir="/w", host=HOST, gpu_indices=[], ro_paths=[])
    assert "--unshare-user" in argv and "--disable-userns" in argv
    assert "/usr/bin/setpriv" not in argv and argv[-2:] == ["--", "true"]


def test_network_none_unshares_the_network_and_unknown_is_refused() -> None:
    argv = build_argv(
        ["true"], workdir="/w", host=HOST, gpu_indices=[], ro_paths=[], network="none"
    )
    assert "--unshare-net" in argv
    with pytest.raises(ValueError, match="network 'lan'"):
        build_argv(["true"], workdir="/w", host=HOST, gpu_indices=[], ro_paths=[], network="lan")


def test_only_the_attempts_own_gpus_are_device_bound() -> None:
    argv = build_argv(["true"], workdir="/w", host=HOST, gpu_indices=[1], ro_paths=[])
    devs = [d for d, _ in pairs(argv, "--dev-bind")]
    assert devs == ["/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]  # no uvm-tools here
    assert ("/sys", "/sys") in pairs(argv, "--ro-bind")
    assert gpu_devices([0, 2], HOST.dev)[:2] == ["/dev/nvidia0", "/dev/nvidia2"]
    # simulated GPUs: no device nodes at all, not even the shared ones
    assert gpu_devices([7], HOST.dev) == []
    assert "--dev-bind" not in build_argv(
        ["true"], workdir="/w", host=HOST, gpu_indices=[7], ro_paths=[]
    )


def test_job_env_is_built_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_AGENT_VAR", "hunter2")
    monkeypatch.setenv("GPUNET_TOKEN", "node-token")
    spec = {
        "env": {
            "MY_VAR": "1",
            "GPUNET_ATTEMPT_ID": "forged",
            "CUDA_VISIBLE_DEVICES": "0,1,2",
            "GPUNET_CHECKPOINT_DIR": "/etc",
        }
    }
    env = job_env(spec, [3], ATTEMPT, home="/workspace")
    assert "SECRET_AGENT_VAR" not in env and "GPUNET_TOKEN" not in env
    assert "hunter2" not in env.values()
    assert env["MY_VAR"] == "1"
    assert env["GPUNET_ATTEMPT_ID"] == "a1" and env["CUDA_VISIBLE_DEVICES"] == "3"
    assert env["GPUNET_JOB_ID"] == "j1" and env["GPUNET_ATTEMPT_NUMBER"] == "2"
    assert env["HOME"] == "/workspace" and env["LANG"] == "C.UTF-8"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["GPUNET_CHECKPOINT_DIR"] == "/workspace/.gpunet-checkpoint"
    path = env["PATH"].split(":")
    assert path[0] == str(Path(sys.prefix) / "bin") and "/usr/bin" in path
    assert set(env) == {
        "PATH", "HOME", "LANG", "MY_VAR", "CUDA_VISIBLE_DEVICES", "GPUNET_JOB_ID",
        "GPUNET_ATTEMPT_ID", "GPUNET_ATTEMPT_NUMBER", "PYTHONUNBUFFERED", "GPUNET_CHECKPOINT_DIR",
    }  # fmt: skip


def test_uid_pool_hands_out_each_uid_once() -> None:
    pool = UidPool(64000, 2)
    a, b = pool.acquire(), pool.acquire()
    assert {a, b} == {64000, 64001} and pool.in_use == 2
    with pytest.raises(UidPoolExhausted, match="all 2 sandbox uids"):
        pool.acquire()
    pool.release(a)
    pool.release(a)  # twice: no duplicate in the free list
    assert pool.acquire() == a
    with pytest.raises(UidPoolExhausted):
        pool.acquire()
    with pytest.raises(ValueError, match="first uid 0"):
        UidPool(0, 4)
    assert UidPool(64000, 64).describe() == "uids 64000-64063"


def fake_tree(root: Path, *, v2_only: bool = False) -> CgroupTree:
    if v2_only:
        root.mkdir(parents=True)
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
        (root / "cgroup.procs").write_text("")
        return CgroupTree(root)
    for ctrl in ("unified", "pids", "memory", "cpu", "freezer"):
        (root / ctrl).mkdir(parents=True)
        (root / ctrl / "cgroup.procs").write_text("")
    return CgroupTree(root)


def test_cgroup_paths_and_limits_on_a_hybrid_host(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    assert tree.mode == "hybrid" and tree.usable() is None
    assert tree.describe() == "cgroup v1 pids/memory/cpu + v2 kill"
    parent = agent_parent(Path("/srv/agent"))
    assert parent == agent_parent(Path("/srv/agent/../agent"))  # stable across restarts
    assert parent != agent_parent(Path("/srv/other"))
    cg = AttemptCgroup(tree, parent, "att_1")
    cg.create(Limits(memory_bytes=2 * GiB, pids=100, cpus=1.5))
    assert cg.procs_files()[0] == str(tmp_path / "unified" / parent / "att_1" / "cgroup.procs")
    assert len(cg.procs_files()) == 5
    assert (tmp_path / "pids" / parent / "att_1" / "pids.max").read_text() == "100"
    mem = tmp_path / "memory" / parent / "att_1" / "memory.limit_in_bytes"
    assert mem.read_text() == str(2 * GiB)
    assert (tmp_path / "cpu" / parent / "att_1" / "cpu.cfs_quota_us").read_text() == "150000"
    (tmp_path / "memory" / parent / "att_1" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"
    )
    assert cg.oom_kills() == 3
    AttemptCgroup(tree, parent, "att_2").create(Limits())
    assert leftovers(tree, parent) == ["att_1", "att_2"]
    with pytest.raises(ValueError, match="one plain path component"):
        AttemptCgroup(tree, parent, "../escape")


def test_cgroup_limits_on_a_pure_v2_host(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path / "cg", v2_only=True)
    assert tree.mode == "v2" and tree.describe() == "cgroup v2"
    cg = AttemptCgroup(tree, Path("gpunet/agent-x"), "att_1")
    cg.create(Limits(memory_bytes=GiB, pids=64, cpus=2))
    d = tmp_path / "cg" / "gpunet" / "agent-x" / "att_1"
    assert (d / "pids.max").read_text() == "64"
    assert (d / "memory.max").read_text() == str(GiB)
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert "+pids" in (tmp_path / "cg" / "cgroup.subtree_control").read_text()


def test_missing_controllers_make_the_tree_unusable(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.procs").write_text("")
    assert CgroupTree(tmp_path).usable() == "cgroup v1 controllers missing: pids, memory, cpu"
    assert "no cgroup v2 tree" in str(CgroupTree(tmp_path / "nowhere").usable())


def test_job_requests_are_capped_by_the_owner() -> None:
    owner = Limits(memory_bytes=8 * GiB, pids=4096, cpus=4)
    asks = {"resources": {"gpus": 1, "memory_gb": 64, "cpus": 2}}
    assert effective_limits(owner, asks) == Limits(memory_bytes=8 * GiB, pids=4096, cpus=2)
    assert effective_limits(owner, {"resources": {"memory_gb": 1}}).memory_bytes == GiB
    assert effective_limits(Limits(), {"resources": {"cpus": 3}}) == Limits(cpus=3)
    assert effective_limits(owner, {}) == owner
