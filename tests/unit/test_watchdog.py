"""The agent's watchdog: when it kills (a pure decision), the files it shares with the agent,
and the kill itself on real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gpunet.agent import lease, watchdog
from gpunet.agent.journal import Entry, Journal, read_pending
from gpunet.agent.watchdog import Action, Freeze, Lease, decide, freeze_step
from tests.e2e.procs import alive, wait_for


def test_a_renewed_lease_is_left_alone_until_the_agents_own_kill_point() -> None:
    cur = Lease(renewed=100.0, timeout_s=30.0)
    term_at = 100.0 + lease.stop_after(30.0)
    kill_at = term_at + lease.stop_grace(30.0)
    assert (cur.term_at, cur.kill_at) == (pytest.approx(term_at), pytest.approx(kill_at))
    # a margin before the coordinator reaps (100 + 30)
    assert 130.0 - cur.kill_at == pytest.approx(lease.margin(30.0)) and lease.margin(30.0) > 0
    assert decide(100.0, cur, agent_alive=True) is Action.WAIT
    assert decide(term_at - 0.01, cur, agent_alive=True) is Action.WAIT
    assert decide(term_at, cur, agent_alive=True) is Action.TERM
    assert decide(kill_at - 0.01, cur, agent_alive=True) is Action.TERM
    assert decide(kill_at, cur, agent_alive=True) is Action.KILL
    assert decide(129.0, cur, agent_alive=True) is Action.KILL


def test_a_renewal_moves_the_kill_point() -> None:
    old, new = Lease(100.0, 30.0), Lease(120.0, 30.0)
    assert decide(126.0, old, agent_alive=True) is Action.KILL
    assert decide(126.0, new, agent_alive=True) is Action.WAIT
    assert decide(141.0, new, agent_alive=True) is Action.TERM


def test_no_lease_yet_kills_nothing_while_the_agent_lives() -> None:
    assert decide(1e9, None, agent_alive=True) is Action.WAIT


def test_a_gone_agent_means_kill_and_exit_whatever_the_lease() -> None:
    assert decide(100.0, Lease(100.0, 30.0), agent_alive=False) is Action.KILL_AND_EXIT
    assert decide(100.0, None, agent_alive=False) is Action.KILL_AND_EXIT


def test_attempts_are_stopped_and_continued_with_their_agent() -> None:
    assert freeze_step(agent_stopped=True, frozen=False) is Freeze.FREEZE
    assert freeze_step(agent_stopped=True, frozen=True) is Freeze.KEEP
    assert freeze_step(agent_stopped=False, frozen=True) is Freeze.THAW
    assert freeze_step(agent_stopped=False, frozen=False) is Freeze.KEEP


def test_the_tick_is_a_small_share_of_the_margin() -> None:
    assert watchdog.tick_s(Lease(0.0, 4.0)) <= lease.margin(4.0) / 5
    assert 0.05 <= watchdog.tick_s(Lease(0.0, 30.0)) <= 0.5


def test_lease_file_round_trip(tmp_path: Path) -> None:
    assert watchdog.read_lease(tmp_path) is None
    watchdog.write_lease(tmp_path, 123.25, 4.0)
    assert watchdog.read_lease(tmp_path) == Lease(123.25, 4.0)
    (tmp_path / watchdog.LEASE_FILE).write_text("garbage")
    assert watchdog.read_lease(tmp_path) is None


def _bare_attempt(home: Path, name: str) -> subprocess.Popen[bytes]:
    """A bare attempt as the runner makes one: its own session, recorded beside its workdir;
    its leader leaves a child behind in the session."""
    from gpunet.agent.runner import SESSION_SUFFIX, _start_time

    (home / "work").mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 300 & sleep 300"], start_new_session=True)
    (home / "work" / (name + SESSION_SUFFIX)).write_text(f"{p.pid} {_start_time(p.pid) or 0}\n")
    return p


def _session_pids(sid: int) -> list[int]:
    from gpunet.agent.runner import _stat

    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and (st := _stat(int(e))) is not None and int(st[3]) == sid
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sessions")
def test_kill_attempts_kills_whole_sessions_and_records_them(tmp_path: Path) -> None:
    p = _bare_attempt(tmp_path, "att-1")
    wait_for(lambda: len(_session_pids(p.pid)) >= 2, 5, "the attempt's child")
    try:
        assert watchdog.kill_attempts(tmp_path) == ["att-1"]
        assert watchdog.kill_attempts(tmp_path) == []  # recorded once
        p.wait(timeout=5)
        wait_for(lambda: not [q for q in _session_pids(p.pid) if alive(q)], 5, "the session")
        assert watchdog.stopped(tmp_path, "att-1") and not watchdog.stopped(tmp_path, "att-2")
        watchdog.forget(tmp_path, "att-1")
        assert not watchdog.stopped(tmp_path, "att-1")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sessions")
def test_the_watchdog_process_kills_on_a_lapsed_lease_and_when_the_agent_is_gone(
    tmp_path: Path,
) -> None:
    watchdog.write_lease(tmp_path, time.monotonic(), 2.0)  # fresh: nothing is killed
    p = _bare_attempt(tmp_path, "att-1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    dog = subprocess.Popen(
        [sys.executable, "-m", "gpunet.agent.watchdog", "--home", str(tmp_path)],
        stdin=subprocess.PIPE,
        env=env,
    )
    try:
        time.sleep(1.0)  # well inside the lease's 1.7 s before the kill point
        assert p.poll() is None and dog.poll() is None
        # the lease lapses (no renewal): the attempt dies at the kill point, recorded
        p.wait(timeout=5)
        assert watchdog.stopped(tmp_path, "att-1")
        # a second attempt, then the agent goes (its pipe closes): killed, and it exits
        watchdog.write_lease(tmp_path, time.monotonic(), 30.0)
        q = _bare_attempt(tmp_path, "att-2")
        time.sleep(0.5)
        assert q.poll() is None
        assert dog.stdin is not None
        dog.stdin.close()
        assert dog.wait(timeout=5) == 0
        q.wait(timeout=5)
        assert not [x for x in _session_pids(q.pid) if alive(x)]
    finally:
        for proc in (p, dog):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sessions")
def test_the_watchdog_stops_the_attempts_with_a_stopped_agent(tmp_path: Path) -> None:
    watchdog.write_lease(tmp_path, time.monotonic(), 60.0)  # a long lease: no kill here
    agent = subprocess.Popen(["sleep", "300"])  # stands for the agent
    p = _bare_attempt(tmp_path, "att-1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    dog = subprocess.Popen(
        [
            sys.executable,
            *("-m", "gpunet.agent.watchdog", "--home", str(tmp_path)),
            *("--agent-pid", str(agent.pid)),
        ],
        stdin=subprocess.PIPE,
        env=env,
    )
    try:
        wait_for(lambda: len(_session_pids(p.pid)) >= 2, 5, "the attempt's child")
        time.sleep(0.5)
        assert {_state(q) for q in _session_pids(p.pid)} == {"S"}
        os.kill(agent.pid, 19)  # SIGSTOP
        wait_for(lambda: {_state(q) for q in _session_pids(p.pid)} == {"T"}, 5, "the stop")
        os.kill(agent.pid, 18)  # SIGCONT
        wait_for(lambda: {_state(q) for q in _session_pids(p.pid)} == {"S"}, 5, "the go")
        assert p.poll() is None and not watchdog.stopped(tmp_path, "att-1")
    finally:
        for proc in (dog, agent):
            proc.kill()
            proc.wait()
        os.killpg(p.pid, 9)
        p.wait()


# ---- finish reports of a frozen agent ---------------------------------------------------
def _entry(seq: int, att: str, kind: str) -> Entry:
    return Entry(seq, att, kind, {"fencing_token": 1})


def test_delivery_is_wanted_while_the_agent_is_stopped_or_its_lease_lapsing() -> None:
    cur = Lease(renewed=100.0, timeout_s=10.0)
    assert watchdog.deliver_wanted(True, 100.0, cur)
    assert watchdog.deliver_wanted(True, 100.0, None)
    assert not watchdog.deliver_wanted(False, 100.0, cur)
    assert not watchdog.deliver_wanted(False, cur.term_at - 0.01, cur)
    assert watchdog.deliver_wanted(False, cur.term_at, cur)  # renewals stopped: hung
    assert not watchdog.deliver_wanted(False, 1e9, None)


def test_only_finished_attempts_start_and_finish_are_delivered_in_journal_order() -> None:
    pending = [
        _entry(1, "a", "started"),
        _entry(2, "b", "started"),
        _entry(3, "a", "logs"),
        _entry(4, "b", "logs"),  # b still runs: nothing of it goes
        _entry(5, "a", "finished"),
        _entry(6, "c", "finished"),  # its start was answered already
    ]
    todo = watchdog.reports_to_deliver(pending, done=set())
    assert [(e.seq, e.attempt_id, e.kind) for e in todo] == [
        (1, "a", "started"),
        (5, "a", "finished"),
        (6, "c", "finished"),
    ]
    assert [e.seq for e in watchdog.reports_to_deliver(pending, done={1, 5})] == [6]
    assert watchdog.reports_to_deliver([_entry(1, "a", "logs")], done=set()) == []


def _journaled_agent(home: Path) -> tuple[Journal, dict[str, int]]:
    """An agent's home as a frozen agent leaves it: credentials, and a journal holding the
    start, output and finish of attempt a1 and the start of a2 (still running), unanswered."""
    (home / "agent.json").write_text(
        json.dumps({"coordinator": "http://co.test", "node_id": "n1", "token": "tok"})
    )
    j = Journal(home)
    j.open()
    seqs = {
        "a1/started": j.append("a1", "started", {"fencing_token": 3}, sync=True),
        "a1/logs": j.append(
            "a1",
            "logs",
            {"fencing_token": 3, "chunks": [{"stream": "stdout", "data": "x"}]},
            sync=False,
        ),
        "a2/started": j.append("a2", "started", {"fencing_token": 4}, sync=True),
        "a1/finished": j.append(
            "a1", "finished", {"fencing_token": 3, "exit_code": 0, "runtime_s": 1.5}, sync=True
        ),
    }
    return j, seqs


def test_the_reporter_delivers_a_journaled_finish_with_the_nodes_token(tmp_path: Path) -> None:
    j, _ = _journaled_agent(tmp_path)
    seen: list[tuple[str, str, dict[str, object]]] = []
    status = {"/v1/agent/attempts/a1/started": 200, "/v1/agent/attempts/a1/finished": 200}

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append((req.url.path, req.headers["authorization"], json.loads(req.content)))
        return httpx.Response(status[req.url.path], json={})

    rep = watchdog.Reporter(tmp_path, transport=httpx.MockTransport(handle))
    rep.wanted.set()
    assert rep.deliver_once() == ["a1"]
    assert [(p, a) for p, a, _ in seen] == [
        ("/v1/agent/attempts/a1/started", "Bearer tok"),
        ("/v1/agent/attempts/a1/finished", "Bearer tok"),
    ]
    assert seen[1][2]["exit_code"] == 0 and seen[1][2]["runtime_s"] == 1.5
    # a second pass sends nothing again; the journal itself is the agent's, untouched
    assert rep.deliver_once() == [] and len(seen) == 2
    assert [e.kind for e in read_pending(tmp_path)] == ["started", "logs", "started", "finished"]
    j.close()


def test_the_reporter_keeps_order_and_retries_while_the_coordinator_is_away(
    tmp_path: Path,
) -> None:
    j, seqs = _journaled_agent(tmp_path)
    answers = iter([503, 200, 409])  # away; then the start; then the finish, already settled
    seen: list[str] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path.rsplit("/", 1)[1])
        return httpx.Response(next(answers), json={})

    rep = watchdog.Reporter(tmp_path, transport=httpx.MockTransport(handle))
    rep.wanted.set()
    assert rep.deliver_once() == []  # the start was not answered: the finish waits
    assert seen == ["started"]
    assert rep.deliver_once() == ["a1"]  # a 409 is an answer: the agent takes it so too
    assert seen == ["started", "started", "finished"]
    # once the agent thaws (delivery no longer wanted), the watchdog sends nothing
    j.ack(seqs["a1/finished"])
    j.append("a2", "finished", {"fencing_token": 4, "exit_code": 1}, sync=True)
    rep.wanted.clear()
    assert rep.deliver_once() == [] and len(seen) == 3
    j.close()


def test_the_reporter_sends_nothing_without_credentials_or_finishes(tmp_path: Path) -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {req.url}")

    rep = watchdog.Reporter(tmp_path, transport=httpx.MockTransport(handle))
    rep.wanted.set()
    assert rep.deliver_once() == []  # no journal, no credentials
    j = Journal(tmp_path)
    j.open()
    j.append("a1", "finished", {"fencing_token": 1, "exit_code": 0}, sync=True)
    assert rep.deliver_once() == []  # no credentials yet
    (tmp_path / "agent.json").write_text("{")
    assert watchdog.read_credentials(tmp_path) is None
    j.close()


def _zombie(home: Path, name: str, code: int) -> subprocess.Popen[bytes]:
    """A bare attempt whose leader exited with ``code`` and was not reaped (its agent frozen):
    a zombie, recorded as the runner records an attempt's session."""
    from gpunet.agent.runner import SESSION_SUFFIX, _start_time

    (home / "work").mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen(["/bin/sh", "-c", f"exit {code}"], start_new_session=True)
    (home / "work" / (name + SESSION_SUFFIX)).write_text(f"{p.pid} {_start_time(p.pid) or 0}\n")
    wait_for(lambda: watchdog._state_of(p.pid) == "Z", 10, "the leader to exit unreaped")
    return p


def test_an_attempt_that_exited_0_unreaped_is_reported_with_its_token(tmp_path: Path) -> None:
    ok, failed = _zombie(tmp_path, "att-ok", 0), _zombie(tmp_path, "att-bad", 3)
    try:
        assert {a for a, _, _ in watchdog.ended_unseen(tmp_path)} == {"att-ok"}
        watchdog.note_token(tmp_path, "att-ok", 7)
        (tmp_path / "agent.json").write_text(
            json.dumps({"coordinator": "http://co.test", "node_id": "n1", "token": "tok"})
        )
        seen: list[dict[str, object]] = []

        def handle(req: httpx.Request) -> httpx.Response:
            assert req.url.path == "/v1/agent/attempts/att-ok/finished"
            seen.append(json.loads(req.content))
            return httpx.Response(200, json={})

        rep = watchdog.Reporter(tmp_path, transport=httpx.MockTransport(handle))
        rep.wanted.set()  # (want() would also start the delivery thread)
        rep.agent_stopped = False  # a hung agent may still reap it: not reported
        assert rep.deliver_once() == [] and seen == []
        rep.agent_stopped = True
        assert rep.deliver_once() == ["att-ok"]
        assert seen[0]["fencing_token"] == 7 and seen[0]["exit_code"] == 0
        assert 0.0 <= float(seen[0]["runtime_s"]) < 10.0  # type: ignore[arg-type]
        assert rep.deliver_once() == [] and len(seen) == 1  # once
        # a finish the agent journaled itself is the one delivered
        rep.done_ended.clear()
        j = Journal(tmp_path)
        j.open()
        j.append("att-ok", "finished", {"fencing_token": 7, "exit_code": 0}, sync=True)
        assert rep.deliver_once() == ["att-ok"] and len(seen) == 2
        assert "reported by the agent's watchdog" not in str(seen[1].get("reason"))
        j.close()
    finally:
        ok.wait()
        failed.wait()
    # reaped: nothing left to report
    assert watchdog.ended_unseen(tmp_path) == []
    watchdog.forget(tmp_path, "att-ok")
    assert watchdog.read_token(tmp_path, "att-ok") is None


def test_exit_status_reads_a_zombies_exit_code() -> None:
    fields = ["Z"] + ["0"] * 48
    assert watchdog.exit_status(fields + [str(0)]) == 0
    assert watchdog.exit_status(fields + [str(3 << 8)]) == 3
    assert watchdog.exit_status(fields + [str(9)]) == -9  # killed by SIGKILL
    assert watchdog.exit_status(["S"] + ["0"] * 49) is None  # not a zombie
    assert watchdog.exit_status(["Z", "1"]) is None  # an old kernel's short line
