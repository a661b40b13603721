"""The agent's report journal: survives a crash mid-write, replays in order, compacts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from gpunet.agent.answers import Answers, Backoff
from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.agent.journal import COMPACT_AFTER_LINES, JOURNAL_FILE, Journal, read_lines
from gpunet.agent.lease import margin, stop_after, stop_grace
from gpunet.agent.loop import Agent
from gpunet.wire.agent import FinishReport, LogLine, LogReport, Report


def _finish(token: int, code: int = 0) -> dict[str, object]:
    return FinishReport(fencing_token=token, exit_code=code, runtime_s=1.5).model_dump(mode="json")


def test_pending_reports_survive_a_restart_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    assert j.open() == []
    a = j.append("a1", "started", Report(fencing_token=1).model_dump(mode="json"), sync=True)
    logs = LogReport(fencing_token=1, chunks=[LogLine(stream="stdout", data="hi\n")])
    j.append("a1", "logs", logs.model_dump(mode="json"), sync=False)
    j.append("a1", "finished", _finish(1), sync=True)
    j.append("a2", "started", Report(fencing_token=4).model_dump(mode="json"), sync=True)
    j.ack(a)
    # the agent dies here (nothing closed); its next run reads the file
    again = Journal(tmp_path)
    pending = again.open()
    assert [(e.attempt_id, e.kind) for e in pending] == [
        ("a1", "logs"),
        ("a1", "finished"),
        ("a2", "started"),
    ]
    rep = pending[1].report()
    assert isinstance(rep, FinishReport) and rep.exit_code == 0 and rep.runtime_s == 1.5
    assert isinstance(pending[0].report(), LogReport)
    # new reports are numbered after the old ones
    nxt = again.append("a3", "started", Report(fencing_token=9).model_dump(mode="json"), sync=True)
    assert nxt > max(e.seq for e in pending)


def test_a_torn_last_record_is_dropped(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    j.append("a1", "finished", _finish(1), sync=True)
    j.append("a2", "finished", _finish(2, 3), sync=True)
    path = tmp_path / JOURNAL_FILE
    whole = path.read_bytes()
    # the agent was killed in the middle of writing its third record
    torn = json.dumps({"s": 3, "a": "a3", "k": "finished", "b": _finish(3)}).encode()[:25]
    path.write_bytes(whole + torn)
    pending = Journal(tmp_path).open()
    assert [e.attempt_id for e in pending] == ["a1", "a2"]
    assert path.read_bytes() == whole  # the torn bytes are gone from the file too
    # a record cut before its newline is torn as well, even when it parses
    records, good = read_lines(whole[:-1])
    assert len(records) == 1 and good == whole.index(b"\n") + 1


def test_the_file_empties_when_everything_is_acknowledged(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    seqs = [j.append(f"a{i}", "finished", _finish(i), sync=True) for i in range(3)]
    path = tmp_path / JOURNAL_FILE
    assert path.stat().st_size > 0
    j.ack(seqs[1])
    assert [e.seq for e in Journal(tmp_path).open()] == [seqs[0], seqs[2]]


def test_acknowledged_reports_are_compacted_away(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.open()
    keep = j.append("old", "finished", _finish(1), sync=False)
    for i in range(COMPACT_AFTER_LINES):
        j.ack(j.append(f"a{i}", "started", {"fencing_token": i}, sync=False))
    path = tmp_path / JOURNAL_FILE
    lines = path.read_bytes().count(b"\n")
    assert lines < 10, lines  # rewritten with the pending report only, then a few more
    assert [e.seq for e in Journal(tmp_path).open()] == [keep]
    j.ack(keep)
    assert path.read_bytes() == b""


def test_backoff_restarts_when_the_coordinator_answers() -> None:
    async def scenario() -> tuple[float, float, float]:
        answers = Answers()
        b = Backoff(answers, base=0.05, cap=10.0)
        await b.pause()
        await b.pause()
        grown = b.delay  # 0.05 -> 0.1 -> 0.2
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, answers.answered)
        t = loop.time()
        b.delay = 5.0
        await b.pause()  # cut short by the answer
        return grown, b.delay, loop.time() - t

    grown, after, waited = asyncio.run(scenario())
    assert grown == 0.2
    assert after == 0.05 and waited < 1.0


def test_the_agent_is_done_stopping_a_margin_before_the_lease_lapses() -> None:
    for lease in (3.0, 30.0, 120.0):
        assert 0 < stop_after(lease) < stop_after(lease) + stop_grace(lease) < lease
        assert margin(lease) >= 0.15 * lease - 1e-9


def test_a_restarted_agent_replays_its_journal_then_says_hello_with_its_finishes(
    tmp_path: Path,
) -> None:
    url = "http://coordinator.test"
    (tmp_path / "agent.json").write_text(
        json.dumps({"coordinator": url, "node_id": "node-1", "token": "t"})
    )
    # what the killed run left: a1's start, output and finish; a2's finish
    old = Journal(tmp_path)
    old.open()
    old.append("a1", "started", Report(fencing_token=1).model_dump(mode="json"), sync=True)
    logs = LogReport(fencing_token=1, chunks=[LogLine(stream="stdout", data="x")])
    old.append("a1", "logs", logs.model_dump(mode="json"), sync=False)
    old.append("a1", "finished", _finish(1), sync=True)
    old.append("a2", "finished", _finish(2, 3), sync=True)
    seen: list[tuple[str, dict[str, object]]] = []

    def coordinator(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        if request.url.path == "/v1/agent/hello":
            return httpx.Response(200, json={"node_id": "node-1", "lease_timeout_s": 30})
        return httpx.Response(200, json={"status": "ok", "truncated": False})

    agent = Agent(url, SimulatedBackend(parse_simulate("1xA100-80GB")), tmp_path)
    agent.http = httpx.AsyncClient(transport=httpx.MockTransport(coordinator))

    async def restart() -> None:
        agent.journal.open()
        await agent.connect()
        await agent.http.aclose()

    asyncio.run(restart())
    assert [p for p, _ in seen] == [
        "/v1/agent/attempts/a1/started",
        "/v1/agent/attempts/a1/logs",
        "/v1/agent/hello",
    ]
    finished = seen[2][1]["finished"]
    assert isinstance(finished, list)
    assert [(f["attempt_id"], f["exit_code"], f["runtime_s"]) for f in finished] == [
        ("a1", 0, 1.5),
        ("a2", 3, 1.5),
    ]
    assert agent.journal.pending() == []
    assert (tmp_path / JOURNAL_FILE).read_bytes() == b""
