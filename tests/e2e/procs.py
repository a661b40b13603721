"""Real processes on 127.0.0.1 for end-to-end tests: free ports, bounded waits, cleanup."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.conftest import migrated

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last one
            last_exc = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def host_pids_with(marker: str) -> list[int]:
    """Host pids of the job processes with ``marker`` as one of their arguments (not
    bubblewrap's: its own command line repeats the job's)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(args[0]) not in (b"bwrap", b"setpriv") and marker.encode() in args:
            out.append(int(entry))
    return out


def ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of a host process, up to (not including) pid 1."""
    out = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.append(pid)
    return out


def environ_var(pid: int, name: str) -> str | None:
    """A variable of a host process's environment (None: not set, or the process is gone)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = name.encode() + b"="
    return next((e[len(prefix) :].decode() for e in env if e.startswith(prefix)), None)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Proc:
    """A gpunet process with its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gpunet", *args],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=10)

    def interrupt(self) -> None:
        """Send SIGINT (a clean stop) without waiting; ``stop()`` waits for it."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=10)
        self._fh.close()


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key for 127.0.0.1, and the private CA that signed them."""

    cert: Path
    key: Path
    ca: Path


class Network:
    """A coordinator and agents, all on 127.0.0.1, driven through the CLI. With ``tls`` the
    coordinator serves https and agents and the CLI trust its CA (``--ca-file``)."""

    def __init__(
        self,
        root: Path,
        db_url: str,
        lease_timeout: float = 3.0,
        tls: TlsFiles | None = None,
        server_args: list[str] | None = None,
    ) -> None:
        self.root = root
        self.server_args = server_args or []  # more flags for `gpunet server`
        self.db_url = db_url
        self.lease_timeout = lease_timeout
        self.tls = tls
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(tls.ca)) if tls else True
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
        self.env["GPUNET_HOME"] = str(root / "home")
        self.coordinator: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.admin = ""
        self.owner = ""  # a provider (join) token, set by two_agent_network
        self.user = ""  # a consumer token, set by two_agent_network

    def start_coordinator(self) -> None:
        if self.coordinator is None:
            # a copy of a migrated store: the server's own migrations cost seconds on a loaded
            # host (a fresh store is migrated at start by the README's, the demo's and the
            # replicas' tests)
            migrated(self.db_url)
        self.coordinator = Proc(
            [
                "server",
                "--database-url",
                self.db_url,
                "--port",
                str(self.port),
                "--lease-timeout",
                str(self.lease_timeout),
                *(
                    ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
                    if self.tls
                    else []
                ),
                "-v",
                *self.server_args,
            ],
            self.env,
            self.root / "coordinator.log",
        )
        wait_for(
            lambda: (
                httpx.get(self.url + "/healthz", timeout=1, verify=self.verify).status_code == 200
            ),
            30,
            "the coordinator to answer",
        )
        self.admin = (self.root / "home" / "admin-token").read_text().strip()

    def stop_coordinator(self) -> None:
        assert self.coordinator
        self.coordinator.stop()

    def token(self, role: str, account: str) -> str:
        r = httpx.post(
            self.url + "/v1/tokens",
            json={"role": role, "account": account},
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
            verify=self.verify,
        )
        r.raise_for_status()
        return str(r.json()["token"])

    def start_agent(
        self,
        name: str,
        simulate: str,
        join_token: str,
        *,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        coordinator: str | None = None,
    ) -> Proc:
        """Start agent ``name``; ``extra``: more ``gpunet agent`` flags; ``env``: more
        environment variables for the agent process; ``coordinator``: the URL it dials
        (default the coordinator's own; a proxy in front of it, say)."""
        home = self.root / f"agent-{name}"
        p = Proc(
            [
                "agent",
                "--coordinator",
                coordinator or self.url,
                "--join-token",
                join_token,
                "--simulate",
                simulate,
                "--name",
                name,
                "--home",
                str(home),
                *(["--ca-file", str(self.tls.ca)] if self.tls else []),
                "-v",
                # the container probe costs a second: only tests of image jobs ask for it
                *([] if "--containers" in (extra or []) else ["--containers", "off"]),
                *(extra or []),
            ],
            {**self.env, **(env or {})},
            self.root / f"agent-{name}.log",
        )
        self.agents[name] = p
        return p

    def wait_online(self, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``count`` agents are online (asked of the API: a CLI process per poll
        would cost a second of CPU each time; the CLI's listing is tested where it is the
        subject)."""
        wait_for(
            lambda: (
                sum(x["status"] == "online" for x in self.api(self.admin, "/v1/nodes")) == count
            ),
            timeout,
            f"{count} agent(s) online",
        )

    def api(self, token: str, path: str) -> Any:
        """GET ``path`` from the coordinator's API with ``token``: the JSON answer (what the
        CLI's ``--json`` prints untouched), for polling in bounded waits. With several
        coordinator URLs (replicas), the first that answers, as the CLI fails over."""

        def get(base: str) -> httpx.Response:
            return httpx.get(
                base + path,
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
                verify=self.verify,
            )

        *others, last = self.url.split(",")
        for base in others:
            try:
                r = get(base)
            except httpx.TransportError:
                continue
            if r.status_code not in (502, 503):
                break
        else:
            r = get(last)
        r.raise_for_status()
        return r.json()

    def job(self, token: str, job_id: str) -> dict[str, Any]:
        """The job as ``gpunet jobs show ID --json`` prints it, read from the API: for the
        polls of bounded waits (a CLI process a poll costs seconds on a loaded host)."""
        return dict(self.api(token, f"/v1/jobs/{job_id}"))

    def output(self, token: str, job_id: str) -> str:
        """The job's logs so far (every stream), read from the API, for polls."""
        chunks = self.api(token, f"/v1/jobs/{job_id}/logs")["chunks"]
        return "".join(c["data"] for c in chunks)

    def agent_credentials(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / f"agent-{name}" / "agent.json").read_text())
        return data

    def cli(self, token: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, GPUNET_URL=self.url, GPUNET_TOKEN=token, COLUMNS="200")
        if self.tls:
            env["GPUNET_CA_FILE"] = str(self.tls.ca)
        return subprocess.run(
            [sys.executable, "-m", "gpunet", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, token: str, *args: str) -> Any:
        r = self.cli(token, *args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def close(self) -> None:
        for a in self.agents.values():  # every agent stops at once, then the coordinator
            a.interrupt()
        for a in self.agents.values():
            a.stop()
        if self.coordinator:
            self.coordinator.stop()

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log.name}\n{p.output()[-3000:]}"
            for p in [*self.agents.values(), *([self.coordinator] if self.coordinator else [])]
        )


@contextmanager
def logs_on_failure(n: Network) -> Iterator[Network]:
    """Close the network's processes at the end; print their log tails when the body fails."""
    try:
        yield n
    except BaseException:
        print(n.logs())
        raise
    finally:
        n.close()


@contextmanager
def two_agent_network(
    root: Path,
    db_url: str,
    simulate: str,
    *,
    lease_timeout: float = 3.0,
    prepare: Callable[[Network], None] | None = None,
    server_args: list[str] | None = None,
) -> Iterator[Network]:
    """A coordinator and agents a1 and a2 (each on ``simulate``), a provider token (``owner``)
    and a consumer token (``user``); ``prepare`` runs before the agents start. Prints every
    process's log tail when the test fails."""
    n = Network(root, db_url, lease_timeout=lease_timeout, server_args=server_args)
    with logs_on_failure(n):
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        if prepare is not None:
            prepare(n)
        n.start_agent("a1", simulate, n.owner)
        n.start_agent("a2", simulate, n.owner)
        n.user = n.token("consumer", "alice")
        n.wait_online(2)
        yield n


@contextmanager
def three_agents(root: Path, db_url: str) -> Iterator[Network]:
    """A coordinator (lease 3 s) and agents a1..a3 with one simulated GPU each, taking
    strangers' jobs in whatever isolation the host allows; ``owner`` and ``user`` tokens."""
    n = Network(root, db_url, lease_timeout=3.0)
    with logs_on_failure(n):
        n.start_coordinator()
        n.owner = n.token("provider", "owner")
        for name in ("a1", "a2", "a3"):
            n.start_agent(name, "1xA100-80GB", n.owner, extra=["--accept-unisolated-jobs"])
        n.user = n.token("consumer", "alice")
        n.wait_online(3)
        yield n
