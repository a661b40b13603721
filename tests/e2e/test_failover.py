"""Clients fail over between coordinator URLs: the SDK, the CLI and the agent, with one
replica down (nothing listening) and one that answers 503 (a proxy with no backend)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpunet.sdk.client import Client
from tests.e2e.procs import Network, free_port, logs_on_failure, wait_for


class _Unavailable(BaseHTTPRequestHandler):
    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        body = b"no backend"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_clients_fail_over_to_the_replica_that_answers(tmp_path: Path, unavailable: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    n = Network(tmp_path, f"sqlite:///{tmp_path / 'gpunet.db'}")
    with logs_on_failure(n):
        n.start_coordinator()
        live = n.url
        owner = n.token("provider", "owner")
        user = n.token("consumer", "alice")

        # the SDK: the down replica is skipped, the 503 one too, and the client sticks
        with Client(f"{down},{unavailable},{live}", user) as c:
            assert c.url == down
            assert c.whoami()["role"] == "consumer"
            assert c.url == live
            before = _Unavailable.hits
            c.whoami()
            assert _Unavailable.hits == before  # stuck to the replica that answered
        with Client(f"{unavailable},{live}", user) as c:
            hits = _Unavailable.hits
            assert c.whoami()["role"] == "consumer"
            assert _Unavailable.hits == hits + 1
        # every replica down: one error naming them all, not a traceback
        with Client(f"{down},{unavailable}", user) as c, pytest.raises(Exception) as exc:
            c.whoami()
        assert "503" in str(exc.value) or down in str(exc.value)

        # the agent and the CLI (GPUNET_URL and --coordinator) with the down replica first
        n.url = f"{down},{live}"
        n.start_agent("a1", "1xA100-80GB", owner)
        n.wait_online(1)  # the CLI through GPUNET_URL=down,live
        r = n.cli(user, "--coordinator", f"{down},{live}", "status", "--json")
        assert r.returncode == 0, r.stderr
        assert f'"coordinator": "{live}"' in r.stdout
        job = n.cli(user, "submit", "--json", str(_spec(tmp_path)))
        assert job.returncode == 0, job.stderr
        job_id = json.loads(job.stdout)["id"]
        wait_for(
            lambda: n.cli_json(user, "jobs", "show", job_id)["state"] == "succeeded",
            30,
            "the job to run on the agent that failed over",
        )
        assert n.agent_credentials("a1")["coordinator"] == down  # saved under the first URL


def _spec(tmp_path: Path) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text('name: hi\ncommand: ["true"]\nresources: {gpus: 1}\n')
    return p
