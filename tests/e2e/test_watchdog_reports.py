"""End to end, the race the agent's watchdog closes: a job exits, its finish report is written
to the agent's journal but not yet delivered, and the agent is frozen (SIGSTOP) past its lease.
The watchdog delivers the journaled finish with the node's token before the lease lapses, so
the job succeeds once, on its first attempt, billed once, and is never run again elsewhere;
the output the frozen agent still held arrives when it thaws. Deterministic: each agent dials
the coordinator through a gate the test shuts (the report cannot leave the agent) until the
agent is frozen with the finish in its journal. Real coordinator, agents and processes, on
PostgreSQL (test_watchdog.py freezes an agent on SQLite)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gpunet.agent.journal import read_pending
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, AttemptCharge
from tests.conftest import only_on
from tests.e2e.procs import (
    Network,
    Proc,
    alive,
    ancestors,
    environ_var,
    host_pids_with,
    logs_on_failure,
    wait_for,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog is Linux's"),
]

LEASE = 6.0
# prints, waits for the test's go (a file appearing), prints again and exits 0
JOB = """\
import os, sys, time
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
print("ran", flush=True)
"""


class Gate:
    """A TCP proxy on 127.0.0.1 in front of the coordinator. Shut, it severs every open
    connection and drops new ones at once: to the agent behind it the coordinator is gone."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.shut_ = threading.Event()
        self.closed = threading.Event()
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            if self.shut_.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self.lock:
                self.conns -= {src, dst}

    def shut(self) -> None:
        self.shut_.set()
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def open(self) -> None:
        self.shut_.clear()

    def close(self) -> None:
        self.closed.set()
        self.shut()
        self.lsock.close()


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[tuple[Network, dict[str, Gate]]]:
    n = Network(tmp_path, db_url, lease_timeout=LEASE)
    gates: dict[str, Gate] = {}
    with logs_on_failure(n):
        try:
            n.start_coordinator()
            n.owner = n.token("provider", "owner")
            for name in ("a1", "a2"):
                gates[name] = Gate(n.port)
                n.start_agent(
                    name,
                    "1xA100-80GB",
                    n.owner,
                    coordinator=gates[name].url,
                    # bare jobs: the job sees the test's go file (a sandbox's /tmp is its own)
                    extra=["--isolation", "none", "--accept-unisolated-jobs"],
                )
            n.user = n.token("consumer", "alice")
            n.wait_online(2)
            for node in n.cli_json(n.admin, "nodes"):
                n.cli_json(n.owner, "price", "set", "--node", node["id"], "3.6")
            n.cli_json(n.admin, "credits", "grant", "--account", "alice", "100")
            yield n, gates
        finally:
            for g in gates.values():
                g.close()


def _running(
    n: Network, db: Database, attempt_id: str, pid: int
) -> tuple[Callable[[], Attempt], str]:
    """Wait until the attempt runs: a reader of its row, and the name of the agent whose
    job ``pid`` is."""

    def attempt() -> Attempt:
        with db.sessions() as s:
            att = s.get(Attempt, attempt_id)
            assert att is not None
            s.expunge(att)
            return att

    wait_for(lambda: attempt().state == "running", 10, "the attempt to be running")
    return attempt, next(x for x, a in n.agents.items() if a.p.pid in ancestors(pid))


def _submit(n: Network, tmp_path: Path, name: str, program: str, go: Path, marker: str) -> str:
    """Submit ``program`` (Python; it waits for the file ``go``, ``marker`` in its argv)."""
    spec = tmp_path / "job.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        name: {name}
        command: ["python3", "-c", {json.dumps(program)}, "{go}", "{marker}"]
        max_retries: 3
        """)
    )
    return str(n.cli_json(n.user, "submit", str(spec))["id"])


def _delivered_while_frozen(
    n: Network,
    agent: Proc,
    gate: Gate,
    attempt: Callable[[], Attempt],
    shut_at: float,
    job_id: str,
    attempt_id: str,
) -> None:
    """Freeze ``agent`` with the attempt's finish report inside it and let the coordinator be
    reached again: its watchdog delivers the success before the lease lapses (counted from
    ``shut_at``, when the agent was cut off), and, frozen well past the lease, no retry runs."""
    os.kill(agent.p.pid, signal.SIGSTOP)
    try:
        gate.open()
        done = wait_for(
            lambda: (a := attempt()).state == "succeeded" and a,
            LEASE,
            "the frozen agent's attempt to succeed",
        )
        assert time.monotonic() - shut_at < LEASE, "delivered after the lease lapsed"
        assert done.exit_code == 0
        # frozen well past the lease: a retry would have been placed and run by now
        time.sleep(max(0.0, 2 * LEASE - (time.monotonic() - shut_at)))
    finally:
        os.kill(agent.p.pid, signal.SIGCONT)
    shown = n.cli_json(n.user, "jobs", "show", job_id)
    assert shown["state"] == "succeeded"
    assert [(a["id"], a["state"], a["exit_code"]) for a in shown["attempts"]] == [
        (attempt_id, "succeeded", 0)
    ]
    assert "delivered the finish report of attempt " + attempt_id in agent.output()


@only_on("postgres")  # the other: SQLite
def test_a_finish_journaled_by_a_frozen_agent_is_delivered_by_its_watchdog(
    net: tuple[Network, dict[str, Gate]], tmp_path: Path
) -> None:
    n, gates = net
    marker = f"wdr-{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    job_id = _submit(n, tmp_path, "finished-then-frozen", JOB, go, marker)
    [pid] = wait_for(
        lambda: [p for p in host_pids_with(marker) if alive(p)], 45, "the job to run", every=0.02
    )
    attempt_id = environ_var(pid, "GPUNET_ATTEMPT_ID")
    assert attempt_id is not None
    db = Database(n.db_url)
    try:
        attempt, name = _running(n, db, attempt_id, pid)
        agent, gate, home = n.agents[name], gates[name], n.root / f"agent-{name}"

        # the agent can no longer reach the coordinator; the job ends now: its finish report
        # stays in the agent's journal
        gate.shut()
        shut_at = time.monotonic()
        go.touch()
        wait_for(
            lambda: any(
                e.attempt_id == attempt_id and e.kind == "finished" for e in read_pending(home)
            ),
            LEASE / 2,
            "the finish report in the agent's journal",
            every=0.02,
        )
        _delivered_while_frozen(n, agent, gate, attempt, shut_at, job_id, attempt_id)
        # the thawed agent sends the output it held (taken after the finish) and its own
        # finish, refused as a repeat: nothing runs or is billed again
        wait_for(lambda: "ran" in n.cli(n.user, "logs", job_id).stdout, 20, "the job's output")
        wait_for(lambda: not read_pending(home), 20, "the thawed agent's journal to empty")
        events = n.cli_json(n.user, "jobs", "events", job_id)
        assert not [e for e in events if "duplicate" in e["reason"]], events
        with db.sessions() as s:
            charges = list(s.scalars(select(AttemptCharge).where(AttemptCharge.job_id == job_id)))
        assert [c.attempt_id for c in charges] == [attempt_id]
        [charge] = charges
        assert charge.settled_at is not None and charge.outcome != "lost"
        runtime = attempt().runtime_s
        assert runtime is not None and abs(charge.billed_seconds - runtime) <= 1.0
        ledger = n.cli(n.admin, "ledger", "verify")
        assert ledger.returncode == 0 and "ledger ok" in ledger.stdout, ledger.stdout
    except BaseException:
        print(n.logs())
        raise
    finally:
        db.engine.dispose()


# the job leaves a daemon (a session of its own) holding its output open, then waits for the
# test's go and exits 0: the agent sees the exit at once, the end of the output much later
JOB_WITH_DAEMON = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    time.sleep(120)
    os._exit(0)
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
print("ran", flush=True)
"""


def test_a_success_is_journaled_when_the_job_exits_not_when_its_output_ends(
    net: tuple[Network, dict[str, Gate]], tmp_path: Path
) -> None:
    """Between a job's exit (the agent reaps it: its exit status is gone from the host) and
    the journaling of its finish, a success exists only inside the agent; an agent frozen
    there loses the lease and the work runs again elsewhere. The agent journals a bare job's
    success as soon as it sees the exit, before it waits for the job's leftovers and output,
    so the watchdog can deliver it. Made deterministic by a job whose daemon keeps its output
    open: the agent reaped the job, and the output has not ended."""
    n, gates = net
    marker = f"wdx-{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    job_id = _submit(n, tmp_path, "exited-then-frozen", JOB_WITH_DAEMON, go, marker)
    pids = wait_for(
        lambda: (ps := [p for p in host_pids_with(marker) if alive(p)]) and len(ps) == 2 and ps,
        45,
        "the job and its daemon to run",
        every=0.02,
    )
    attempt_id = environ_var(pids[0], "GPUNET_ATTEMPT_ID")
    assert attempt_id is not None
    db = Database(n.db_url)
    agent = None
    try:
        attempt, name = _running(n, db, attempt_id, pids[0])
        agent, gate, home = n.agents[name], gates[name], n.root / f"agent-{name}"

        gate.shut()  # the finish cannot leave the agent: it stays in the journal
        shut_at = time.monotonic()
        go.touch()
        wait_for(
            lambda: len([p for p in host_pids_with(marker) if alive(p)]) == 1,
            LEASE / 2,
            "the job to exit (its daemon still running)",
            every=0.02,
        )
        wait_for(
            lambda: any(
                e.attempt_id == attempt_id and e.kind == "finished" for e in read_pending(home)
            ),
            LEASE / 3,
            "the success in the agent's journal while the job's output is still open",
            every=0.02,
        )
        _delivered_while_frozen(n, agent, gate, attempt, shut_at, job_id, attempt_id)
        events = n.cli_json(n.user, "jobs", "events", job_id)
        assert not [e for e in events if "duplicate" in e["reason"]], events
        ledger = n.cli(n.admin, "ledger", "verify")
        assert ledger.returncode == 0 and "ledger ok" in ledger.stdout, ledger.stdout
    except BaseException:
        print(n.logs())
        raise
    finally:
        if agent is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.p.pid, signal.SIGCONT)
        for p in host_pids_with(marker):  # the daemon
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        db.engine.dispose()
