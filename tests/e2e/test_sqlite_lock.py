"""A second coordinator on one SQLite file is refused; the lock goes with its holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.procs import Proc, free_port, wait_for


def _server(home: Path, port: int, log: Path) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env["GPUNET_HOME"] = str(home)
    return Proc(["server", "--port", str(port)], env, log)


def _second(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env.update(GPUNET_HOME=str(home), COLUMNS="300")
    return subprocess.run(
        [sys.executable, "-m", "gpunet", "server", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_coordinator_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    first = _server(home, port, tmp_path / "first.log")
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
            30,
            "the first coordinator",
        )
        r = _second(home)
        assert r.returncode == 1, r.stdout + r.stderr
        msg = " ".join(r.stderr.split())
        assert "another gpunet coordinator is using the SQLite database" in msg
        assert str(home / "gpunet.db") in msg
        assert f"held by process {first.p.pid}" in msg
        assert "Traceback" not in r.stderr
        # the first one is unharmed
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        # kill -9 leaves the lock file behind, but not the lock: a new coordinator starts
        first.kill9()
        assert (home / "gpunet.db.lock").exists()
        port2 = free_port()
        again = _server(home, port2, tmp_path / "again.log")
        try:
            wait_for(
                lambda: (
                    httpx.get(f"http://127.0.0.1:{port2}/healthz", timeout=1).status_code == 200
                ),
                30,
                "a coordinator after kill -9 of the first",
            )
        finally:
            again.stop()
    finally:
        first.stop()
