"""The agent's report journal: every attempt report is written to the agent's home before it is
sent, and marked done once the coordinator answered it, so a report survives the agent's own
death (kill -9 included) and is delivered by the agent's next run.

The journal is one append-only file of JSON lines: ``{"s": seq, "a": attempt, "k": kind,
"b": body}`` for a report and ``{"ack": seq}`` once it was answered. Finish and start reports
are fsynced before they are queued (they decide billing and whether a job runs again); log
reports are only flushed (they survive the agent's death, not the host's). A torn last line
(the agent died mid-write) is dropped when the journal is opened. The file is cut back to
nothing whenever every report is acknowledged, and rewritten with only the pending ones when
it has grown long, so it never holds more than the reports still in flight.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpunet.wire.agent import FinishReport, LogReport, Report

log = logging.getLogger("gpunet.agent")

JOURNAL_FILE = "reports.journal"
COMPACT_AFTER_LINES = 2000  # rewrite with the pending reports only once this many are written


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled report, not yet answered by the coordinator."""

    seq: int
    attempt_id: str
    kind: str  # started | logs | finished
    body: dict[str, Any]

    def report(self) -> Report:
        """The report as the agent queued it."""
        return decode(self.kind, self.body)


def decode(kind: str, body: dict[str, Any]) -> Report:
    if kind == "finished":
        return FinishReport.model_validate(body)
    if kind == "logs":
        return LogReport.model_validate(body)
    return Report.model_validate(body)


def read_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The journal's well-formed records, and the length of the prefix that holds them: a
    torn or garbled record ends the readable part (nothing after it was acknowledged)."""
    records: list[dict[str, Any]] = []
    good = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # no newline: the write was cut short
            break
        try:
            rec = json.loads(data[pos:end])
        except ValueError:
            break
        if not isinstance(rec, dict):
            break
        records.append(rec)
        pos = good = end + 1
    return records, good


def pending_of(records: list[dict[str, Any]]) -> list[Entry]:
    """Reports not acknowledged, in the order they were written."""
    entries: dict[int, Entry] = {}
    for rec in records:
        if "ack" in rec:
            entries.pop(int(rec["ack"]), None)
        elif {"s", "a", "k", "b"} <= rec.keys():
            entries[int(rec["s"])] = Entry(int(rec["s"]), str(rec["a"]), str(rec["k"]), rec["b"])
    return [entries[s] for s in sorted(entries)]


def read_pending(home: Path) -> list[Entry]:
    """The reports in ``home``'s journal not yet answered, read without touching the file (for
    the agent's watchdog, which reads the journal of a live, perhaps frozen, agent: a record
    the agent is writing now reads as torn and is left out)."""
    try:
        data = (home / JOURNAL_FILE).read_bytes()
    except OSError:
        return []
    return pending_of(read_lines(data)[0])


class Journal:
    """The report journal in ``home`` (see the module docstring)."""

    def __init__(self, home: Path) -> None:
        self.path = home / JOURNAL_FILE
        self._fd: int | None = None
        self._pending: dict[int, Entry] = {}
        self._next = 1
        self._lines = 0

    def open(self) -> list[Entry]:
        """Read what an earlier run left (dropping a torn last record) and return the reports
        it did not get answered, oldest first."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        records, good = read_lines(data)
        if good < len(data):
            log.warning("report journal: dropped a torn record (%d bytes)", len(data) - good)
        pending = pending_of(records)
        seqs = [int(r["s"]) for r in records if "s" in r] + [
            int(r["ack"]) for r in records if "ack" in r
        ]
        self._next = max(seqs, default=0) + 1
        self._pending = {e.seq: e for e in pending}
        self._rewrite()  # start from exactly the pending reports
        return pending

    def pending(self) -> list[Entry]:
        return [self._pending[s] for s in sorted(self._pending)]

    def append(self, attempt_id: str, kind: str, body: dict[str, Any], *, sync: bool) -> int:
        """Write one report; returns its sequence number (for :meth:`ack`)."""
        seq = self._next
        self._next += 1
        entry = Entry(seq, attempt_id, kind, body)
        self._pending[seq] = entry
        self._write({"s": seq, "a": attempt_id, "k": kind, "b": body}, sync=sync)
        return seq

    def ack(self, seq: int) -> None:
        """The coordinator answered report ``seq`` (accepted or refused for good)."""
        if self._pending.pop(seq, None) is None:
            return
        if not self._pending:
            self._truncate()
        elif self._lines >= COMPACT_AFTER_LINES:
            self._rewrite()
        else:
            self._write({"ack": seq}, sync=False)

    def ack_all(self, seqs: Iterator[int] | list[int]) -> None:
        for seq in seqs:
            self.ack(seq)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- file ---------------------------------------------------------------------------
    def _fileno(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def _write(self, rec: dict[str, Any], *, sync: bool) -> None:
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        fd = self._fileno()
        os.write(fd, line)
        if sync:
            os.fsync(fd)
        self._lines += 1

    def _truncate(self) -> None:
        os.ftruncate(self._fileno(), 0)
        self._lines = 0

    def _rewrite(self) -> None:
        """Replace the file with the pending reports only (atomically: a crash leaves the old
        file or the new one)."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for e in self.pending():
                rec = {"s": e.seq, "a": e.attempt_id, "k": e.kind, "b": e.body}
                f.write((json.dumps(rec, separators=(",", ":")) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        self._lines = len(self._pending)
