"""Coordinator replicas on one PostgreSQL database: who leads, fencing, cross-replica wake-ups.

Every replica serves every route. Exactly one, the **leader**, runs the singleton loops
(scheduler pass, lease reaper, metering, tiers, archive and checkpoint collection). It is
elected through a PostgreSQL advisory lock held by a connection of its own: the lock lives as
long as that connection, so when the leader dies (its connection drops) the lock is free and
another replica takes it at its next try, within a second. Each election increments a
**fencing epoch** (the one row of ``coordinator_leader``); the leader's writes that matter
(placements, reaping) check it in their own transaction with a share lock on that row, so a
deposed leader that still runs a pass has its writes refused, and the new leader's election
waits for any such transaction in flight.

Wake-ups cross replicas through ``LISTEN/NOTIFY``: a placement made by the leader wakes the
long-poll of its agent on whichever replica it waits; a submit or a finish report on a
follower wakes the leader's scheduler.

On SQLite there is one coordinator (``store.lockfile``): it always leads and nothing here
touches the network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from gpunet.errors import Conflict
from gpunet.store.db import Database
from gpunet.store.tables import CoordinatorLeader
from gpunet.util import now

log = logging.getLogger("gpunet.replicas")

LOCK_KEY = 0x67706E6C  # the advisory lock of the leader ("gpnl")
CHANNEL = "gpunet_wake"
MAX_PAYLOAD = 7000  # NOTIFY payloads must stay under 8000 bytes
# what the leader runs, for `gpunet status` and /metrics
SINGLETON_LOOPS = (
    "scheduler",
    "reaper",
    "metering",
    "tiers",
    "blob_gc",
    "checkpoint_gc",
    "services",
)


class Deposed(Conflict):
    """This replica no longer leads: its write is refused (fencing)."""


def _dsn(db: Database) -> str:
    """The libpq URL of a SQLAlchemy ``postgresql+psycopg://`` URL."""
    return db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def fence_epoch(s: Session, epoch: int | None, replica: str) -> None:
    """Refuse this transaction's writes unless the leader row still holds ``epoch`` (None:
    the caller knows it no longer leads). The share lock on that row makes a new election
    wait until this transaction ends. A no-op on SQLite, where one coordinator leads."""
    if s.get_bind().dialect.name != "postgresql":
        return
    now_epoch = s.execute(
        text("SELECT epoch FROM coordinator_leader WHERE id = 1 FOR SHARE")
    ).scalar()
    if epoch is None or now_epoch != epoch:
        raise Deposed(f"replica {replica} no longer leads (epoch {epoch}, now {now_epoch})")


class Leadership:
    """Whether this replica leads, and the epoch it was elected with."""

    def __init__(self, db: Database, replica: str) -> None:
        self.db = db
        self.replica = replica
        self.shared = db.is_postgres
        # SQLite: one coordinator per file (store.lockfile), the leader from the start
        self.is_leader = not self.shared
        self.epoch: int | None = None
        self.since: datetime | None = None if self.shared else now()
        self.leader: str | None = None if self.shared else replica  # as last read
        self.leader_epoch: int | None = None
        self._conn: Any = None  # psycopg.Connection holding the advisory lock

    def check(self) -> bool:
        """Try to become leader, or prove this replica still is; returns whether it leads.
        Blocking (a thread): called every second by the leadership loop."""
        if not self.shared:
            return True
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(_dsn(self.db), autocommit=True, connect_timeout=5)
            if not self.is_leader:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                if row and row[0]:
                    self._elect()
            else:
                # the lock lives as long as this connection: prove it is still open
                self._conn.execute("SELECT 1")
            self._read()
            if self.is_leader and self.leader_epoch != self.epoch:
                log.error("replica %s was deposed (epoch %s)", self.replica, self.leader_epoch)
                self._drop()
        except psycopg.Error as exc:
            if self.is_leader:
                log.error("replica %s lost its leader lock: %s", self.replica, exc)
            self._drop()
        return self.is_leader

    def _elect(self) -> None:
        at = now()
        with self.db.transaction() as s:
            # waits for a deposed leader's fenced transaction in flight (it holds a share lock)
            epoch = s.execute(
                update(CoordinatorLeader)
                .where(CoordinatorLeader.id == 1)
                .values(epoch=CoordinatorLeader.epoch + 1, replica=self.replica, elected_at=at)
                .returning(CoordinatorLeader.epoch)
            ).scalar_one()
        self.epoch, self.since, self.is_leader = int(epoch), at, True
        log.warning("replica %s leads (epoch %d)", self.replica, epoch)

    def _read(self) -> None:
        with self.db.sessions() as s:
            row = s.get(CoordinatorLeader, 1, populate_existing=True)
            if row is not None:
                self.leader, self.leader_epoch = row.replica, int(row.epoch)

    def _drop(self) -> None:
        self.is_leader, self.epoch = False, None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                conn.close()  # releases the advisory lock, if the server still had it

    def close(self) -> None:
        self._drop()

    def fence(self, s: Session) -> None:
        """Refuse this transaction's writes unless this replica still leads with its epoch.
        The share lock on the leader row makes a new election wait until it commits."""
        if not self.shared:
            return
        fence_epoch(s, self.epoch if self.is_leader else None, self.replica)

    def view(self) -> dict[str, Any]:
        """Who leads what, for /healthz and `gpunet status`."""
        return {
            "replica": self.replica,
            "leader": self.replica if self.is_leader else self.leader,
            "epoch": self.epoch if self.is_leader else self.leader_epoch,
            "leads": list(SINGLETON_LOOPS) if self.is_leader else [],
        }


class Bus:
    """Cross-replica wake-ups over PostgreSQL LISTEN/NOTIFY (nothing on SQLite).

    ``publish`` only queues (it is called from request handlers and the event loop); a thread
    sends the queued wake-ups, coalesced, and another listens and hands what other replicas
    sent to ``deliver(scheduler, node ids)``."""

    def __init__(
        self,
        db: Database,
        replica: str,
        deliver: Callable[[bool, list[str]], None],
        leads: Callable[[], bool],
        reconnected: Callable[[], None],
        forget: Callable[[str], None] | None = None,
    ) -> None:
        self.db = db
        self.replica = replica
        self.deliver = deliver
        self.leads = leads
        self.reconnected = reconnected  # missed notifications: wake every local long-poll
        self.forget = forget  # a token revoked on another replica leaves this one's cache
        self.enabled = db.is_postgres
        # (wake the scheduler?, node ids to wake, token hashes to forget)
        self._out: queue.Queue[tuple[bool, list[str], list[str]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sent = 0
        self.received = 0

    def start(self) -> None:
        if not self.enabled:
            return
        for fn in (self._listen, self._send):
            t = threading.Thread(target=fn, name=f"gpunet-bus-{fn.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._out.put(None)
        for t in self._threads:
            t.join(timeout=3)

    def publish(self, scheduler: bool, nodes: list[str]) -> None:
        if not self.enabled:
            return
        if scheduler and self.leads() and not nodes:
            return  # the leader's own scheduler was woken locally
        self._out.put((scheduler, list(nodes), []))

    def publish_forget(self, token_hash: str) -> None:
        """A token was revoked here: the other replicas drop it from their caches."""
        if self.enabled:
            self._out.put((False, [], [token_hash]))

    def _payloads(self, scheduler: bool, nodes: set[str], tokens: set[str]) -> list[str]:
        out: list[str] = [json.dumps({"r": self.replica, "t": [t]}) for t in sorted(tokens)]
        chunk: list[str] = []
        size = 0
        for n in sorted(nodes):
            if size + len(n) + 4 > MAX_PAYLOAD:
                out.append(json.dumps({"r": self.replica, "s": 0, "n": chunk}))
                chunk, size = [], 0
            chunk.append(n)
            size += len(n) + 4
        if chunk or scheduler:
            out.append(json.dumps({"r": self.replica, "s": int(scheduler), "n": chunk}))
        return out

    def _send(self) -> None:
        import psycopg

        conn: Any = None
        while not self._stop.is_set():
            item = self._out.get()
            if item is None:
                break
            scheduler, nodes, tokens = item[0], set(item[1]), set(item[2])
            while True:  # coalesce whatever else is queued already
                try:
                    more = self._out.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._stop.set()
                    break
                scheduler, nodes = scheduler or more[0], nodes | set(more[1])
                tokens |= set(more[2])
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(_dsn(self.db), autocommit=True, connect_timeout=5)
                for p in self._payloads(scheduler, nodes, tokens):
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))
                    self.sent += 1
            except psycopg.Error as exc:
                log.warning("could not send wake-ups to other replicas: %s", exc)
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(_dsn(self.db), autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.reconnected()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.25):  # short: a stop is seen soon
                            self._take(n.payload)
            except psycopg.Error as exc:
                log.warning("wake-up listener lost its connection: %s", exc)
                self._stop.wait(1.0)

    def _take(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if msg.get("r") == self.replica:
            return
        self.received += 1
        if self.forget is not None:
            for t in msg.get("t") or []:
                self.forget(str(t))
        if msg.get("s") or msg.get("n"):
            self.deliver(bool(msg.get("s")), [str(n) for n in msg.get("n") or []])


__all__ = ["SINGLETON_LOOPS", "Bus", "Deposed", "Leadership"]
