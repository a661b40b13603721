"""Helpers for integration tests: a coordinator in-process behind fastapi's TestClient."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi.testclient import TestClient

from gpunet.api.app import create_app
from gpunet.services.auth import bootstrap_admin
from gpunet.settings import Settings
from gpunet.store import tables
from gpunet.store.db import Database
from tests.conftest import migrated

T = TypeVar("T")

DEADLINE_S = 10.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(
    fn: Callable[[], T | None],
    *,
    timeout: float = DEADLINE_S,
    poll: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def gpu(index: int, model: str = "A100-80GB", memory_mb: int = 80_000) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-test-{index}",
        "name": f"Simulated {model}",
        "model": model,
        "memory_mb": memory_mb,
        "simulated": True,
    }


@dataclass
class Node:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return auth(self.token)


class Coordinator:
    """A running coordinator plus shortcuts for the calls tests make over and over."""

    def __init__(self, client: TestClient, db: Database, admin: str) -> None:
        self.c = client
        self.db = db
        self.admin = admin

    def token(self, role: str, account: str) -> str:
        r = self.c.post(
            "/v1/tokens", json={"role": role, "account": account}, headers=auth(self.admin)
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def register(
        self,
        provider: str,
        gpus: list[dict[str, Any]] | None = None,
        name: str = "node",
        **settings: Any,
    ) -> Node:
        """Register a node with a provider's join token. ``settings`` are the registration's
        isolation fields; by default the owner accepts strangers' jobs unisolated, so tests
        about other things may submit from any account."""
        body = {
            "name": name,
            "gpus": gpus if gpus is not None else [gpu(0), gpu(1)],
            "agent_version": "test",
            "accepts_unisolated": True,
        } | settings
        r = self.c.post("/v1/agent/register", json=body, headers=auth(provider))
        assert r.status_code == 201, r.text
        return Node(r.json()["node_id"], r.json()["token"])

    def submit(
        self, token: str, spec: dict[str, Any] | None = None, key: str | None = None
    ) -> dict[str, Any]:
        body = spec if spec is not None else {"name": "t", "command": ["true"]}
        headers = auth(token) | ({"Idempotency-Key": key} if key else {})
        r = self.c.post("/v1/jobs", json=body, headers=headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, token: str, job_id: str) -> dict[str, Any]:
        r = self.c.get(f"/v1/jobs/{job_id}", headers=auth(token))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self, token: str, job_id: str) -> list[dict[str, Any]]:
        r = self.c.get(f"/v1/jobs/{job_id}/events", headers=auth(token))
        assert r.status_code == 200, r.text
        return list(r.json())

    def work(self, node: Node, wait: float = 0) -> dict[str, Any]:
        r = self.c.get("/v1/agent/work", params={"wait": wait}, headers=node.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def next_start(self, node: Node, *, keep_alive: bool = False) -> dict[str, Any]:
        """Long-poll until the scheduler hands this node an attempt (bounded). ``keep_alive``:
        heartbeat (naming no attempt) before each poll, for a node that holds none and has a
        lease shorter than a pass may take on a loaded machine."""

        def poll() -> dict[str, Any] | None:
            if keep_alive:
                self.heartbeat(node)
            found = self.work(node, wait=0.3 if keep_alive else 2)
            return found["start"][0] if found["start"] else None

        return wait_for(poll, poll=0, what=f"an attempt for {node.id}")

    def report(self, node: Node, attempt: dict[str, Any], what: str, **body: Any) -> Any:
        body.setdefault("fencing_token", attempt["fencing_token"])
        return self.c.post(
            f"/v1/agent/attempts/{attempt['attempt_id']}/{what}", json=body, headers=node.headers
        )

    def heartbeat(self, node: Node, attempts: list[str] | None = None) -> dict[str, Any]:
        r = self.c.post(
            "/v1/agent/heartbeat", json={"attempts": attempts or []}, headers=node.headers
        )
        assert r.status_code == 200, r.text
        return dict(r.json())


def archive(files: dict[str, bytes]) -> bytes:
    """A working-directory archive (tar.gz) holding ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fast_settings(url: str, **kw: Any) -> Settings:
    kw.setdefault("scheduler_interval_s", 0.1)
    kw.setdefault("reaper_interval_s", 0.2)
    kw.setdefault("telemetry_flush_s", 0.5)
    # the pass in a thread, on PostgreSQL too: the same pass, without a child process that
    # costs each test a second of CPU to start (the child is tested in test_pass_worker.py,
    # and by every end-to-end test on PostgreSQL; None there: the servers' default)
    kw.setdefault("scheduler_process", False)
    return Settings(database_url=url, **kw)


@contextmanager
def coordinator(url: str, **settings: Any) -> Iterator[Coordinator]:
    """A migrated store, a bootstrap admin token, and the app running behind a TestClient."""
    migrated(url)
    db = Database(url)
    admin = bootstrap_admin(db)
    assert admin is not None
    with tempfile.TemporaryDirectory(prefix="gpunet-ckpt-") as ckpt:
        settings.setdefault("checkpoint_dir", ckpt)  # never the user's GPUNET_HOME
        app = create_app(fast_settings(url, **settings), db=db)
        with TestClient(app) as client:
            yield Coordinator(client, db, admin)


@contextmanager
def one_queued_job(url: str) -> Iterator[Database]:
    """A migrated store with one node ("n1", one free GPU, bare jobs allowed) and one
    queued one-GPU job ("job1"), written directly: no coordinator, so no pass has run."""
    migrated(url)
    d = Database(url)
    at = datetime.now(UTC)
    with d.transaction() as s:
        s.add(tables.Account(id="acct_o", name="owner", created_at=at))
        s.add(tables.Account(id="acct_u", name="user", created_at=at))
        s.flush()
        s.add(
            tables.Node(
                id="n1",
                name="n1",
                account_id="acct_o",
                registered_at=at,
                last_heartbeat_at=at,
                accepts_unisolated=True,
            )
        )
        s.flush()
        s.add(
            tables.Gpu(
                id="n1/0",
                node_id="n1",
                index=0,
                uuid="GPU-0",
                model="A100-80GB",
                name="A100",
                memory_mb=80_000,
                cc_major=8,
                cc_minor=0,
            )
        )
        s.add(
            tables.Job(
                id="job1",
                account_id="acct_u",
                name="j",
                spec={"command": ["true"]},
                state="queued",
                gpu_count=1,
                max_retries=3,
                created_at=at,
            )
        )
        s.flush()
        s.add(tables.JobEvent(job_id="job1", from_state=None, to_state="queued", at=at))
    try:
        yield d
    finally:
        d.dispose()
