"""End to end in a real browser: a coordinator and two agents on simulated GPUs, driven by the
CLI, watched through the dashboard in chromium. Runs on SQLite (the store plays no
part in what the page shows)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import only_on
from tests.e2e.browser import chromium, require_browser, sign_in
from tests.e2e.procs import Network, two_agent_network

pytestmark = pytest.mark.e2e

WAIT_MS = 60_000


@pytest.fixture
def browser() -> Iterator[Any]:
    require_browser()
    with chromium() as b:
        yield b


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    with two_agent_network(tmp_path, db_url, "2xA100-80GB") as n:
        yield n


def _run_detached(net: Network, token: str, name: str, *command: str) -> str:
    r = net.cli(token, "run", "--detach", "--name", name, "--", *command)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1]


@only_on("sqlite")  # the browser's view; the store plays no part
def test_dashboard_follows_the_fleet_jobs_and_a_drain_live(browser: Any, net: Network) -> None:
    # the fleet, as an admin: both nodes online, their four GPUs listed
    admin = sign_in(browser, net.url, net.admin)
    admin.wait_for_selector("text=2 of 2 nodes online")
    assert admin.locator("[data-gpu]").count() == 4
    assert admin.inner_text("#who") == "admin"

    # a consumer follows a job started through the CLI, without reloading the page
    alice = sign_in(browser, net.url, net.user)
    prog = "import time; print('step one', flush=True); time.sleep(5); print('all done')"
    job_id = _run_detached(net, net.user, "alice-job", "python3", "-c", prog)
    alice.goto(f"{net.url}/jobs/{job_id}")
    first = alice.inner_text("#job-state")
    assert first in ("queued", "assigned", "running"), first
    alice.evaluate("window.__not_reloaded = true")
    alice.wait_for_selector("#job-state:text-is('succeeded')", timeout=WAIT_MS)
    logs = alice.inner_text("#logs")
    assert "step one" in logs and "all done" in logs
    assert alice.evaluate("window.__not_reloaded === true"), "the page was reloaded"

    # another tenant's job is nowhere on the consumer's pages
    bob = net.token("consumer", "bob")
    bob_job = _run_detached(net, bob, "bob-private", "true")
    alice.goto(f"{net.url}/jobs")
    alice.wait_for_selector(f"[data-job='{job_id}']")
    assert bob_job not in alice.content() and "bob-private" not in alice.content()
    alice.goto(f"{net.url}/jobs/{bob_job}")
    assert alice.inner_text("h1") == "404" and "bob-private" not in alice.content()

    # an admin watches a GPU's timeline while the CLI drains it
    gpu_id = net.cli_json(net.admin, "gpus")[0]["id"]
    admin.goto(f"{net.url}/gpus/{gpu_id}")
    admin.evaluate("window.__not_reloaded = true")
    r = net.cli(net.admin, "gpus", "drain", gpu_id, "--reason", "e2e: fan noise")
    assert r.returncode == 0, r.stderr
    admin.wait_for_selector("#gpu tr.ev-lifecycle >> text=e2e: fan noise", timeout=WAIT_MS)
    assert admin.evaluate("window.__not_reloaded === true")

    # and activates it again from the page (a CSRF-checked form)
    admin.fill("input[name=reason]", "e2e: fixed")
    admin.click("button[value=activate]")
    admin.wait_for_selector("#gpu tr.ev-lifecycle >> text=e2e: fixed")
    assert not net.cli_json(net.admin, "gpus")[0]["drained"]

    # signing out ends the session: the sign-in form is back
    admin.click("text=Sign out")
    admin.wait_for_selector("input[name=token]")
    admin.goto(f"{net.url}/jobs")
    assert admin.locator("input[name=token]").count() == 1
