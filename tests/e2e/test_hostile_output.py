"""End to end: a job floods its output with NUL, bytes that are not UTF-8 and 50 MiB; the
coordinator keeps it escaped and capped, and another tenant's job on the same node is not held
up. Runs on PostgreSQL, whose text cannot hold a NUL (the integration tests store hostile
output on both databases)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import only_on
from tests.e2e.procs import Network, two_agent_network, wait_for

pytestmark = pytest.mark.e2e

CAP = 64 * 1024

FLOOD = (
    "import sys, time\n"
    "out = sys.stdout.buffer\n"
    "out.write(b'before\\x00nul \\xff\\xfe bad \\xc3\\xa9 ok\\n'); out.flush()\n"
    "block = b'y' * (1 << 20)\n"
    "for _ in range(50): out.write(block)\n"
    "out.flush()\n"
    "sys.stderr.write('after the flood\\n')\n"
)


def _api(n: Network, token: str, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(
        method, n.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw
    )
    assert r.status_code < 300, r.text
    return r.json()


def _done(n: Network, token: str, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = _api(n, token, "GET", f"/v1/jobs/{job_id}")
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


@only_on("postgres")  # NUL can't be stored there; integration tests cover both
def test_hostile_output_is_kept_escaped_and_capped(tmp_path: Path, db_url: str) -> None:
    with two_agent_network(
        tmp_path, db_url, "2xA100-80GB", server_args=["--max-log-bytes", str(CAP)]
    ) as n:
        # one node only, so both tenants' reports share its one queue
        n.agents["a2"].stop()
        n.wait_online()
        bob = n.token("consumer", "bob")
        t0 = time.monotonic()
        flood = _api(
            n,
            n.user,
            "POST",
            "/v1/jobs",
            json={"name": "flood", "command": ["python3", "-c", FLOOD]},
        )
        quiet = _api(
            n,
            bob,
            "POST",
            "/v1/jobs",
            json={"name": "quiet", "command": ["sh", "-c", "sleep 0.5; echo bob ok"]},
        )
        q = wait_for(lambda: _done(n, bob, quiet["id"]), 60, "bob's job")
        f = wait_for(lambda: _done(n, n.user, flood["id"]), 60, "the flood")
        took = time.monotonic() - t0
        assert q["state"] == "succeeded" and f["state"] == "succeeded", (q, f)
        assert q["node_id"] == f["node_id"]

        logs = _api(n, bob, "GET", f"/v1/jobs/{quiet['id']}/logs")
        assert [c["data"] for c in logs["chunks"]] == ["bob ok\n"]

        logs = _api(n, n.user, "GET", f"/v1/jobs/{flood['id']}/logs")
        chunks = logs["chunks"]
        text = "".join(c["data"] for c in chunks if c["stream"] == "stdout")
        assert text.startswith("before\\x00nul \\xff\\xfe bad é ok\n"), text[:80]
        kept = sum(len(c["data"].encode()) for c in chunks if c["stream"] != "system")
        assert kept == CAP
        notices = [c["data"] for c in chunks if c["stream"] == "system"]
        assert notices == [f"[gpunet: output truncated after {CAP} bytes]\n"]
        assert "after the flood" not in "".join(c["data"] for c in chunks)
        print(f"50 MiB flood and a second tenant's job done in {took:.1f}s; kept {kept} bytes")
