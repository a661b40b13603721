"""Several coordinator replicas on one PostgreSQL database, on 127.0.0.1 (tests and
benchmarks): start, find the leader, kill one, restart it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.procs import Network, Proc, free_port, wait_for


class Replicas(Network):
    """A Network whose coordinator is ``count`` replicas (``url`` names them all, so the CLI
    and agents fail over between them)."""

    def __init__(self, root: Path, db_url: str, count: int = 2, **kw: Any) -> None:
        super().__init__(root, db_url, **kw)
        self.ports = [free_port() for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.procs: dict[int, Proc] = {}
        self.url = ",".join(self.urls)
        self.port = self.ports[0]

    def start_replica(self, i: int) -> None:
        self.procs[i] = Proc(
            [
                "server",
                "--database-url",
                self.db_url,
                "--port",
                str(self.ports[i]),
                "--lease-timeout",
                str(self.lease_timeout),
                "-v",
                *self.server_args,
            ],
            self.env,
            self.root / f"replica-{i}.log",
        )
        wait_for(lambda: self.health(i), 30, f"replica {i} to answer")

    def start_coordinator(self) -> None:
        """Every replica, one after another (the first creates the admin token)."""
        for i in range(len(self.ports)):
            self.start_replica(i)
        self.admin = (self.root / "home" / "admin-token").read_text().strip()

    def health(self, i: int) -> dict[str, Any] | None:
        try:
            r = httpx.get(self.urls[i] + "/healthz", timeout=2)
        except httpx.HTTPError:
            return None
        return dict(r.json()) if r.status_code == 200 else None

    def leader(self, timeout: float = 15) -> int:
        """The index of the replica that leads, once exactly one of the live ones does."""

        def one() -> int | None:
            leads = [i for i in self.procs if (h := self.health(i)) and h["leads"]]
            return leads[0] + 1 if len(leads) == 1 else None  # +1: index 0 is truthy

        return wait_for(one, timeout, "exactly one leader", every=0.1) - 1

    def kill9(self, i: int) -> None:
        p = self.procs.pop(i)
        p.kill9()
        p._fh.close()

    def token(self, role: str, account: str) -> str:
        r = httpx.post(
            self.urls[0] + "/v1/tokens",
            json={"role": role, "account": account},
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        )
        r.raise_for_status()
        return str(r.json()["token"])

    def close(self) -> None:
        super().close()
        for p in self.procs.values():
            p.stop()

    def logs(self) -> str:
        tails = [f"--- {p.log.name}\n{p.output()[-4000:]}" for p in self.procs.values()]
        return super().logs() + "\n" + "\n".join(tails)
