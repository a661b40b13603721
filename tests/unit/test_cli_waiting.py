"""`gpunet run` / `submit --follow` say why a job waits, without a terminal too."""

from __future__ import annotations

from typing import Any

from gpunet.cli.waiting import wait_until_started


class FakeClient:
    def __init__(self, states: list[str], whys: list[dict[str, Any]]) -> None:
        self.states, self.whys = states, whys
        self.i = 0

    def job(self, job_id: str) -> dict[str, Any]:
        st = self.states[min(self.i, len(self.states) - 1)]
        self.i += 1
        return {"id": job_id, "state": st}

    def why(self, job_id: str) -> dict[str, Any]:
        return self.whys[min(self.i - 1, len(self.whys) - 1)]


def test_without_a_terminal_a_line_is_printed_each_time_the_reason_changes() -> None:
    credits = {"summary": "0/1 GPUs fit: 1 waiting for credits", "note": "waiting for credits: x"}
    busy = {"summary": "0/1 GPUs fit: 1 busy", "note": ""}
    client = FakeClient(
        ["queued", "queued", "queued", "queued", "assigned", "running"],
        [credits, credits, busy, busy, busy, busy],
    )
    lines: list[str] = []
    job = wait_until_started(client, "job1", tty=False, poll_s=0, emit=lines.append)
    assert job["state"] == "running"
    assert lines == [
        "job1 queued: 0/1 GPUs fit: 1 waiting for credits (waiting for credits: x)",
        "job1 queued: 0/1 GPUs fit: 1 busy",
        "job1 assigned, starting...",
    ]


def test_a_job_that_ends_while_waiting_returns_at_once() -> None:
    client = FakeClient(["failed"], [])
    lines: list[str] = []
    assert wait_until_started(client, "j", tty=False, poll_s=0, emit=lines.append)["state"] == (
        "failed"
    )
    assert lines == []


def test_on_a_terminal_the_spinner_is_used_and_nothing_is_printed_per_poll() -> None:
    client = FakeClient(["queued", "running"], [{"summary": "0/1 GPUs fit: 1 busy"}])
    lines: list[str] = []
    assert wait_until_started(client, "j", tty=True, poll_s=0, emit=lines.append)["state"] == (
        "running"
    )
    assert lines == []


def test_run_interruptible_submits_an_interruptible_spec(monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from gpunet.cli import jobs as cli_jobs
    from gpunet.cli.main import app

    sent: list[dict[str, Any]] = []

    class Recorder:
        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def submit(self, spec: dict[str, Any], workdir: object = None) -> dict[str, Any]:
            sent.append(spec)
            return {"id": "job1", "name": spec["name"], "state": "queued"}

    monkeypatch.setattr(cli_jobs, "Client", Recorder)
    runner = CliRunner()
    r = runner.invoke(app, ["run", "--interruptible", "--detach", "--", "python3", "t.py"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["run", "--detach", "--", "python3", "t.py"])
    assert r.exit_code == 0, r.output
    assert [s.get("interruptible", False) for s in sent] == [True, False]
