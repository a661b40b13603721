"""Following a job from the CLI as a newcomer would: Ctrl-C on `gpunet run` asks whether to
cancel (on a terminal) or says how to reattach and cancel (without one); `submit FILE --follow`
uploads the YAML's folder when the command names a file there."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import Network, logs_on_failure, wait_for

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
REPO = Path(__file__).resolve().parents[2]
# a job that says it runs, then runs until it is cancelled
LONG = ["python3", "-c", "import time; print('working', flush=True); time.sleep(300)"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("follow")
    n = Network(root, f"sqlite:///{root / 'gpunet.db'}")
    with logs_on_failure(n):
        n.start_coordinator()
        n.start_agent("a1", "2xL4", n.token("provider", "owner"))
        n.user = n.token("consumer", "alice")
        n.wait_online(1)
        yield n


def _env(net: Network) -> dict[str, str]:
    return dict(net.env, GPUNET_URL=net.url, GPUNET_TOKEN=net.user, COLUMNS="200")


def _running_job(net: Network) -> str:
    jobs = wait_for(
        lambda: [j for j in net.cli_json(net.user, "jobs") if j["state"] == "running"],
        30,
        "the job to run",
    )
    assert len(jobs) == 1, jobs
    return str(jobs[0]["id"])


def _state(net: Network, job_id: str) -> str:
    return str(net.cli_json(net.user, "jobs", "show", job_id)["state"])


def _cancel(net: Network, job_id: str) -> None:
    assert net.cli(net.user, "cancel", job_id).returncode == 0
    wait_for(lambda: _state(net, job_id) == "cancelled", 30, f"{job_id} to be cancelled")


class Terminal:
    """`gpunet ...` on a pseudo-terminal: what it printed so far, and typing into it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gpunet", *args],
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def read(self) -> str:
        while self.master >= 0 and select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            self.seen += chunk
        return ANSI.sub("", self.seen.decode(errors="replace"))

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        try:
            wait_for(lambda: text in self.read(), timeout, f"{text!r} on the terminal")
        except AssertionError:
            print(f"the terminal showed:\n{self.read()!r}")
            raise

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def exit_code(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.p.poll() is None and time.monotonic() < deadline:
            self.read()
        if self.p.poll() is None:
            self.p.kill()
            raise AssertionError(f"still running; it printed:\n{self.read()}")
        self.read()
        os.close(self.master)
        self.master = -1  # closed: read() answers what was seen
        return int(self.p.returncode)


def test_ctrl_c_without_a_terminal_says_how_to_reattach_and_cancel(
    net: Network, tmp_path: Path
) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as o, err.open("wb") as e:
        p = subprocess.Popen(
            [sys.executable, "-m", "gpunet", "run", "--gpus", "1", "--", *LONG],
            env=_env(net),
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
        )
        try:
            wait_for(lambda: "working" in out.read_text(), 60, "the job's output")
            job_id = _running_job(net)
            p.send_signal(signal.SIGINT)
            code = p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
    said = err.read_text()
    assert code == 130, said
    assert f"gpunet logs -f {job_id}" in said and f"gpunet cancel {job_id}" in said, said
    assert "[y/N]" not in said  # nobody to answer: no question
    assert "Traceback" not in said
    assert _state(net, job_id) == "running"  # detached, not cancelled
    _cancel(net, job_id)


def test_ctrl_c_on_a_terminal_asks_and_n_detaches(net: Network) -> None:
    term = Terminal(["run", "--gpus", "1", "--", *LONG], _env(net))
    term.wait_for_text("working", 60)
    job_id = _running_job(net)
    term.p.send_signal(signal.SIGINT)
    term.wait_for_text(f"cancel job {job_id}? [y/N]")
    term.type("n\n")
    assert term.exit_code() == 130
    said = term.read()
    assert f"gpunet logs -f {job_id}" in said and f"gpunet cancel {job_id}" in said, said
    assert _state(net, job_id) == "running"
    _cancel(net, job_id)


@pytest.mark.parametrize("answer", ["y", "second Ctrl-C"])
def test_ctrl_c_on_a_terminal_cancels_on_y_or_a_second_ctrl_c(net: Network, answer: str) -> None:
    term = Terminal(["run", "--gpus", "1", "--", *LONG], _env(net))
    term.wait_for_text("working", 60)
    job_id = _running_job(net)
    term.p.send_signal(signal.SIGINT)
    term.wait_for_text(f"cancel job {job_id}? [y/N]")
    if answer == "y":
        term.type("y\n")
    else:
        term.p.send_signal(signal.SIGINT)
    assert term.exit_code() == 130, term.read()
    assert "Traceback" not in term.read()
    wait_for(lambda: _state(net, job_id) == "cancelled", 30, f"{job_id} to be cancelled")


def test_submit_follow_uploads_the_yaml_folder(net: Network, tmp_path: Path) -> None:
    """examples/job.yaml runs `python3 train.py`, which lies next to it: no --workdir needed,
    from any directory."""
    r = net.cli(net.user, "submit", str(REPO / "examples" / "job.yaml"), "--follow", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "uploading the folder of job.yaml as the working directory (--workdir to choose another)"
        in r.stderr
    )
    assert "step 4" in r.stdout and "done" in r.stdout
