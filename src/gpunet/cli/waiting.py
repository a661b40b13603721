"""Waiting for a job to start, saying why it waits (``jobs why``) while it does.

On a terminal the spinner shows the latest reason; otherwise (a pipe, a log file, CI) one line
is printed each time the reason changes, so a job that waits for credits or quota says so
instead of hanging silently. Both go to stderr: stdout carries only the job's output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from gpunet.cli.output import err_console
from gpunet.sdk.client import TERMINAL


class _Jobs(Protocol):
    def job(self, job_id: str) -> dict[str, Any]: ...

    def why(self, job_id: str) -> dict[str, Any]: ...


def reason_of(job: dict[str, Any], why: Callable[[], dict[str, Any]]) -> str:
    """One line: the job's state and, while it is queued, why (summary and note)."""
    if job["state"] != "queued":
        return f"{job['state']}, starting..."
    w = why()
    note = w.get("note") or ""
    return f"queued: {w.get('summary', '')}" + (f" ({note})" if note else "")


def wait_until_started(
    client: _Jobs,
    job_id: str,
    *,
    tty: bool | None = None,
    poll_s: float = 0.3,
    emit: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Poll until the job runs or ends; returns the job. ``tty`` None: stderr decides."""
    tty = err_console.is_terminal if tty is None else tty
    say = emit or (lambda line: err_console.print(line, markup=False, highlight=False))
    last = ""
    if tty:
        with err_console.status(f"{job_id} queued, waiting for a GPU...") as status:
            while True:
                job = client.job(job_id)
                if job["state"] in {"running"} | TERMINAL:
                    return job
                status.update(f"{job_id} {reason_of(job, lambda: client.why(job_id))}")
                time.sleep(poll_s)
    while True:
        job = client.job(job_id)
        if job["state"] in {"running"} | TERMINAL:
            return job
        line = f"{job_id} {reason_of(job, lambda: client.why(job_id))}"
        if line != last:
            say(line)
            last = line
        time.sleep(poll_s)
