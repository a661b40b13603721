"""A hostile tenant against the agent's sandbox: real coordinator and agent processes, jobs
that attack what this test started (the agent's token, the coordinator's files, another
attempt, the agent's process, the host's pid and memory budget) and assert the exact failure.

Needs root, bubblewrap and writable cgroups; skipped without them, failed under CI.
"""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpunet.agent.sandbox import SandboxConfig, probe
from gpunet.agent.sandbox.cgroups import CgroupTree, agent_parent
from gpunet.sdk.client import Client
from tests.conftest import only_on
from tests.e2e.procs import Network, alive, host_pids_with, logs_on_failure, wait_for

pytestmark = pytest.mark.e2e

PIDS_MAX = 64
AGENT_FLAGS = [
    "--isolation",
    "sandbox",
    "--attempt-pids",
    str(PIDS_MAX),
    "--attempt-memory-gb",
    "0.25",
]
SECRET_VAR = "SECRET_AGENT_VAR"


def _sandbox_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the sandbox tests need root (a uid per attempt, cgroups)"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed"
    iso = probe(Path("/nonexistent-gpunet-probe"), SandboxConfig())
    return None if iso.level == "sandbox" else iso.line()


@pytest.fixture(scope="module", autouse=True)
def _needs_sandbox() -> None:
    why = _sandbox_unavailable()
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the job sandbox is required in CI: {why}")
    pytest.skip(why)


def start_sandboxed(n: Network) -> None:
    """A coordinator and one sandboxed agent ``a1`` with 4 simulated GPUs; the agent's own
    environment holds a secret that no job may see."""
    n.start_coordinator()
    n.owner = n.token("provider", "owner")
    n.start_agent("a1", "4xT4", n.owner, extra=AGENT_FLAGS, env={SECRET_VAR: "hunter2"})
    n.user = n.token("consumer", "mallory")
    n.wait_online()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The attacks run against one network, on SQLite: the sandbox is the agent's, the store
    plays no part in it, and the database file in the coordinator's home is one more secret a
    job must not read (the integration tests run the reports' paths on both databases)."""
    root = tmp_path_factory.mktemp("hostile")
    with logs_on_failure(Network(root, f"sqlite:///{root / 'home' / 'gpunet.db'}")) as n:
        start_sandboxed(n)
        yield n


def py_job(code: str, name: str = "attack", marker: str = "") -> dict[str, Any]:
    """A Python job; ``marker``, an extra argument, finds its process on the host."""
    return {
        "name": name,
        "command": ["python3", "-c", textwrap.dedent(code), *([marker] if marker else [])],
        "resources": {"gpus": 1},
    }


def submit(net: Network, spec: dict[str, Any]) -> str:
    with Client(net.url, net.user) as c:
        return str(c.submit(spec)["id"])


def finish(net: Network, job_id: str, timeout: float = 40) -> tuple[dict[str, Any], str]:
    """Wait for the job to end; its record and its whole log."""
    with Client(net.url, net.user) as c:
        job = c.wait(job_id, timeout_s=timeout, poll_s=0.2)
        logs = "".join(ch["data"] for ch in c.logs(job_id)["chunks"])
    return job, logs


def run_job(net: Network, spec: dict[str, Any]) -> tuple[dict[str, Any], str]:
    job, logs = finish(net, submit(net, spec))
    print(logs)
    return job, logs


def running(net: Network, job_id: str) -> dict[str, Any]:
    with Client(net.url, net.user) as c:
        return wait_for(
            lambda: (j := c.job(job_id))["state"] == "running" and j, 30, f"{job_id} running"
        )


PROBE = """
import errno, os, sys
def probe(label, fn):
    try:
        fn()
        print(label, "OK")
    except OSError as e:
        print(label, errno.errorcode[e.errno])
"""


def test_job_cannot_read_tokens_or_the_agents_environment(net: Network) -> None:
    agent_json = net.root / "agent-a1" / "agent.json"
    admin_token = net.root / "home" / "admin-token"
    secrets = [agent_json, admin_token]
    if net.db_url.startswith("sqlite"):  # the database itself holds every job's env secrets
        secrets.append(net.root / "home" / "gpunet.db")
    assert all(p.exists() for p in secrets)
    job, logs = run_job(
        net,
        py_job(
            PROBE
            + f"""
for p in {[str(p) for p in secrets]!r}:
    probe("read " + p, lambda: open(p).read())
probe("list /home", lambda: os.listdir("/home"))
print("env", sorted(os.environ))
print("uid", os.getuid(), "cwd", os.getcwd(), "home", os.environ["HOME"])
"""
        ),
    )
    assert job["state"] == "succeeded", logs
    for p in secrets:
        assert f"read {p} ENOENT" in logs
    assert "list /home ENOENT" in logs
    assert SECRET_VAR not in logs and "hunter2" not in logs
    uid_line = next(ln for ln in logs.splitlines() if ln.startswith("uid "))
    assert int(uid_line.split()[1]) >= 64000  # a dedicated uid, not root
    assert "cwd /workspace home /workspace" in uid_line


def test_attempts_cannot_reach_each_other(net: Network) -> None:
    marker = "victim-7f3a"
    victim = submit(
        net,
        py_job(
            """
            import os, time
            open("secret.txt", "w").write("the victim's secret")
            print("ready", flush=True)
            time.sleep(60)
            """,
            name="victim",
            marker=marker,
        ),
    )
    att = running(net, victim)["attempts"][-1]["id"]
    victim_dir = net.root / "agent-a1" / "work" / att
    wait_for(lambda: (victim_dir / "secret.txt").exists(), 20, "the victim's secret")
    st = victim_dir.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid >= 64000
    victim_pid = wait_for(lambda: host_pids_with(marker), 10, "the victim's process")[0]
    job, logs = run_job(
        net,
        py_job(
            PROBE
            + f"""
probe("read victim file", lambda: open({str(victim_dir / "secret.txt")!r}).read())
probe("list victim dir", lambda: os.listdir({str(victim_dir)!r}))
probe("read victim environ", lambda: open("/proc/{victim_pid}/environ").read())
probe("signal victim", lambda: os.kill({victim_pid}, 0))
print("my uid", os.getuid())
"""
        ),
    )
    assert job["state"] == "succeeded", logs
    assert "read victim file ENOENT" in logs and "list victim dir ENOENT" in logs
    assert "read victim environ ENOENT" in logs and "signal victim ESRCH" in logs
    attacker_uid = int(next(ln for ln in logs.splitlines() if ln.startswith("my uid")).split()[2])
    assert attacker_uid != st.st_uid  # even with the path, another uid's 0700 directory
    assert alive(victim_pid)
    with Client(net.url, net.user) as c:
        c.cancel(victim)
        assert c.wait(victim, timeout_s=30)["state"] == "cancelled"
    wait_for(lambda: not alive(victim_pid), 10, "the victim to be stopped")


def test_job_cannot_signal_or_ptrace_the_agent(net: Network) -> None:
    agent_pid = net.agents["a1"].p.pid
    job, logs = run_job(
        net,
        py_job(
            PROBE
            + f"""
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
def ptrace_attach():
    if libc.ptrace(16, {agent_pid}, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
probe("stop agent", lambda: os.kill({agent_pid}, signal.SIGSTOP))
probe("ptrace agent", ptrace_attach)
probe("agent environ", lambda: open("/proc/{agent_pid}/environ").read())
# inside the sandbox, pid 1 is bubblewrap (root): the job's uid may not touch it either
probe("stop pid 1", lambda: os.kill(1, signal.SIGSTOP))
probe("ptrace pid 1", lambda: libc.ptrace(16, 1, None, None) == 0 or (_ for _ in ()).throw(
    OSError(ctypes.get_errno(), "ptrace")))
"""
        ),
    )
    assert job["state"] == "succeeded", logs
    assert "stop agent ESRCH" in logs and "ptrace agent ESRCH" in logs
    assert "agent environ ENOENT" in logs
    assert "stop pid 1 EPERM" in logs and "ptrace pid 1 EPERM" in logs
    state = Path(f"/proc/{agent_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state in ("S", "R")  # not stopped, not traced


def test_job_cannot_make_user_namespaces_or_use_the_keyring(net: Network) -> None:
    job, logs = run_job(
        net,
        py_job(
            PROBE
            + """
import ctypes, platform, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def raw(nr, *args):
    def call():
        if libc.syscall(nr, *args) < 0:
            raise OSError(ctypes.get_errno(), "syscall")
    return call
def unshare(flags):
    def call():
        if hasattr(os, "unshare"):  # Python 3.12+
            os.unshare(flags)
        elif libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
    return call
r = subprocess.run(["/usr/bin/unshare", "-U", "true"], capture_output=True, text=True)
print("unshare -U exit", r.returncode, r.stderr.strip())
probe("unshare NEWUSER", unshare(0x10000000))
probe("unshare FS", unshare(0x200))  # no namespace: allowed
nr = {"x86_64": {"keyctl": 250, "clone3": 435, "bpf": 321, "setns": 308},
      "aarch64": {"keyctl": 219, "clone3": 435, "bpf": 280, "setns": 268}}[platform.machine()]
probe("keyctl", raw(nr["keyctl"], 0, -3, 0))  # KEYCTL_GET_KEYRING_ID, the session keyring
probe("clone3", raw(nr["clone3"], None, 0))
probe("bpf", raw(nr["bpf"], 0, None, 0))
probe("setns", raw(nr["setns"], os.open("/proc/self/ns/user", os.O_RDONLY), 0))
print("seccomp mode", [ln.split()[1] for ln in open("/proc/self/status")
                       if ln.startswith("Seccomp:")][0])
"""
        ),
    )
    assert job["state"] == "succeeded", logs
    assert "unshare -U exit 1 unshare: unshare failed: Operation not permitted" in logs
    # without the filter: unshare -U exits 0, unshare NEWUSER and keyctl are OK, and clone3,
    # bpf and setns (into its own user namespace) fail with EINVAL
    assert "unshare NEWUSER EPERM" in logs and "unshare FS OK" in logs
    assert "keyctl EPERM" in logs and "clone3 ENOSYS" in logs and "bpf EPERM" in logs
    assert "setns EPERM" in logs
    assert "seccomp mode 2" in logs  # SECCOMP_MODE_FILTER
    assert "seccomp" in " ".join(net.agents["a1"].output().split())  # the probe line says so


def test_ordinary_work_runs_under_the_filter(net: Network) -> None:
    job, logs = run_job(
        net,
        py_job(
            """
            import multiprocessing, os, subprocess, threading

            def square(x):
                return x * x

            if __name__ == "__main__":
                out = []
                ts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                print("threads", sorted(out))
                r = subprocess.run(["sh", "-c", "echo ok"], capture_output=True, text=True)
                print("subprocess", r.stdout.strip())
                with multiprocessing.Pool(2) as pool:
                    print("pool", sum(pool.map(square, range(10))))
                pid = os.fork()
                if pid == 0:
                    os._exit(3)
                print("fork exit", os.waitpid(pid, 0)[1] >> 8)
            """
        ),
    )
    assert job["state"] == "succeeded", logs
    assert "threads [0, 1, 2, 3]" in logs and "subprocess ok" in logs
    assert "pool 285" in logs and "fork exit 3" in logs


def daemon_job(marker: str, then_sleep: float) -> dict[str, Any]:
    """Leaves a setsid, double-forked sleeper (``marker`` in its command line), then sleeps."""
    return {
        "name": "daemon",
        "command": [
            "sh",
            "-c",
            f"setsid -f sh -c 'exec sleep 1000 {marker}' </dev/null >/dev/null 2>&1; "
            f"echo spawned; sleep {then_sleep}",
        ],
        "resources": {"gpus": 1},
    }


def _sleeper(marker: str) -> int:
    pids = wait_for(lambda: host_pids_with(marker), 15, "the setsid sleeper")
    assert len(pids) == 1
    return pids[0]


def test_setsid_daemon_dies_when_its_attempt_ends(net: Network) -> None:
    marker = "7001"
    job_id = submit(net, daemon_job(marker, then_sleep=3))
    pid = _sleeper(marker)
    job, logs = finish(net, job_id)
    assert job["state"] == "succeeded" and "spawned" in logs
    wait_for(lambda: not alive(pid), 10, f"the sleeper {pid} to be gone")


def test_setsid_daemon_dies_on_cancel(net: Network) -> None:
    marker = "7002"
    job_id = submit(net, daemon_job(marker, then_sleep=120))
    pid = _sleeper(marker)
    with Client(net.url, net.user) as c:
        c.cancel(job_id)
        assert c.wait(job_id, timeout_s=30)["state"] == "cancelled"
    wait_for(lambda: not alive(pid), 10, f"the sleeper {pid} to be gone")


def test_fork_bomb_is_bounded_by_pids_max(net: Network) -> None:
    job, logs = run_job(
        net,
        py_job(
            """
            import errno, os, signal, time
            kids = []
            try:
                for _ in range(10_000):
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(30)
                        os._exit(0)
                    kids.append(pid)
                print("no limit hit")
            except OSError as e:
                print("fork failed", errno.errorcode[e.errno], "after", len(kids))
            for k in kids:
                os.kill(k, signal.SIGKILL)
            """
        ),
    )
    assert job["state"] == "succeeded", logs
    line = next(ln for ln in logs.splitlines() if ln.startswith("fork failed"))
    assert line.split()[2] == "EAGAIN"
    assert int(line.split()[-1]) < PIDS_MAX
    # the host is fine: the agent still takes work
    job, logs = run_job(net, py_job("print('after the bomb')"))
    assert job["state"] == "succeeded" and "after the bomb" in logs


def test_memory_hog_is_oom_killed_and_the_result_says_so(net: Network) -> None:
    job, logs = run_job(
        net,
        py_job(
            """
            blocks = []
            for i in range(64):  # 1 GiB, 16 MiB at a time, against a 0.25 GB limit
                blocks.append(bytearray(16 << 20))
                print("allocated MiB", (i + 1) * 16, flush=True)
            print("survived")
            """
        ),
    )
    assert job["state"] == "failed", logs
    assert "survived" not in logs
    assert job["exit_code"] == 128 + signal.SIGKILL
    assert "out of memory" in logs
    attempt = job["attempts"][-1]
    assert "out of memory" in str(attempt.get("reason", "")) or "out of memory" in str(
        job.get("reason", "")
    )


@only_on("sqlite")  # the agent's doing
def test_kill9_agent_restart_kills_what_its_attempts_left(tmp_path: Path, db_url: str) -> None:
    with logs_on_failure(Network(tmp_path, db_url, lease_timeout=10.0)) as net:
        start_sandboxed(net)
        marker = "7003"
        job_id = submit(net, daemon_job(marker, then_sleep=120))
        att = running(net, job_id)["attempts"][-1]["id"]
        pid = _sleeper(marker)
        tree = CgroupTree()
        cg = tree.v2 / agent_parent(tmp_path / "agent-a1") / att
        assert cg.is_dir()
        net.agents["a1"].kill9()
        net.start_agent("a1", "4xT4", net.owner, extra=AGENT_FLAGS)
        wait_for(lambda: not alive(pid), 15, f"the sleeper {pid} to be gone")
        wait_for(lambda: not cg.exists(), 15, "the old attempt's cgroup to be removed")
        wait_for(
            lambda: f"killed leftovers of attempt {att}" in net.agents["a1"].output(),
            15,
            "the agent to log what it killed",
        )
        assert not (tmp_path / "agent-a1" / "work" / att).exists()
