"""The coordinator's in-process state: leases, wake-ups, metrics (its settings:
``gpunet.settings``)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpunet.services.auth import Authenticator
from gpunet.services.checkpoint_store import CheckpointStore
from gpunet.services.metrics import Metrics
from gpunet.services.metrics_store import StoreCollector
from gpunet.services.replicas import Bus, Leadership
from gpunet.settings import Settings
from gpunet.store.db import Database
from gpunet.tunnel.hub import TunnelHub

if TYPE_CHECKING:
    from gpunet.loops.pass_worker import PassWorker


@dataclass
class Lease:
    seen_mono: float
    seen_at: datetime
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    flushed: bool = False
    heard_at: datetime | None = None  # the node's last request (None: a grace lease only)


class LeaseBook:
    """When each node was last heard from. Kept in memory so heartbeats cost no write;
    the telemetry is flushed to the store in batches."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def renew(
        self,
        node_id: str,
        at: datetime,
        telemetry: list[dict[str, Any]] | None,
        *,
        heard: bool = True,
    ) -> float:
        """Record a heartbeat; return seconds since the previous one (0 for the first).
        ``heard``: the node itself spoke (not a grace lease granted at our start)."""
        t = time.monotonic()
        with self._lock:
            old = self._leases.get(node_id)
            heard_at = at if heard else (old.heard_at if old else None)
            self._leases[node_id] = Lease(
                t, at, telemetry or (old.telemetry if old else []), heard_at=heard_at
            )
        return t - old.seen_mono if old else 0.0

    def heard_at(self, node_id: str) -> datetime | None:
        """When the node was last heard from since this coordinator started (None: not yet):
        the latest moment its attempts are known to have been running (interim billing)."""
        with self._lock:
            lease = self._leases.get(node_id)
            return lease.heard_at if lease else None

    def expired(self, timeout_s: float) -> list[str]:
        cutoff = time.monotonic() - timeout_s
        with self._lock:
            return [n for n, lease in self._leases.items() if lease.seen_mono < cutoff]

    def fresh(self, timeout_s: float) -> set[str]:
        """Nodes this coordinator heard from (or granted a lease) within ``timeout_s``."""
        cutoff = time.monotonic() - timeout_s
        with self._lock:
            return {n for n, lease in self._leases.items() if lease.seen_mono >= cutoff}

    def forget(self, node_id: str) -> None:
        with self._lock:
            self._leases.pop(node_id, None)

    def known(self, node_id: str) -> bool:
        with self._lock:
            return node_id in self._leases

    def take_unflushed(self) -> dict[str, Lease]:
        """Leases renewed by their node since the last flush (a grace lease granted at our
        start is not a heartbeat: other replicas must not take it for one)."""
        with self._lock:
            out = {
                n: lease
                for n, lease in self._leases.items()
                if not lease.flushed and lease.heard_at is not None
            }
            for lease in out.values():
                lease.flushed = True
            return out

    def energy_counters(self) -> dict[str, float]:
        """GPU id -> the energy counter its node's last heartbeat reported."""
        with self._lock:
            return {
                f"{node_id}/{r['index']}": float(r["energy_j"])
                for node_id, lease in self._leases.items()
                for r in lease.telemetry
                if r.get("energy_j") is not None and "index" in r
            }

    def lags(self) -> list[float]:
        t = time.monotonic()
        with self._lock:
            return [t - lease.seen_mono for lease in self._leases.values()]


class Wakeups:
    """asyncio events that wake long-polls (per node) and the scheduler loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nodes: dict[str, asyncio.Event] = {}
        self.scheduler = asyncio.Event()
        self.closing = False
        # nodes whose last work query came back empty and that nothing has woken since, with
        # what the agent then said it held: their long-polls that say the same can wait
        # without asking the store (idle polls then cost no query)
        self.quiet: dict[str, object] = {}
        # tells the other replicas (services.replicas.Bus): (scheduler?, node ids)
        self.publish: Any = None

    def close(self) -> None:
        """The coordinator is stopping: release every long-poll now."""
        self.closing = True
        for ev in self.nodes.values():
            ev.set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def node_event(self, node_id: str) -> asyncio.Event:
        ev = self.nodes.get(node_id)
        if ev is None:
            ev = self.nodes[node_id] = asyncio.Event()
        return ev

    def _call(self, fn: Any, *args: Any) -> None:
        if self.loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def wake_nodes(self, node_ids: list[str]) -> None:
        for n in node_ids:
            self._call(self._wake, n)
        if node_ids and self.publish is not None:
            self.publish(False, list(node_ids))  # their long-polls may wait on another replica

    def _wake(self, node_id: str) -> None:
        self.quiet.pop(node_id, None)
        self.node_event(node_id).set()

    def wake_scheduler(self) -> None:
        self._call(self.scheduler.set)
        if self.publish is not None:
            self.publish(True, [])  # the leader may be another replica

    def deliver(self, scheduler: bool, node_ids: list[str]) -> None:
        """Wake-ups another replica sent: wake what waits here (from any thread)."""
        if scheduler:
            self._call(self.scheduler.set)
        for n in node_ids:
            self._call(self._wake_if_here, n)

    def _wake_if_here(self, node_id: str) -> None:
        self.quiet.pop(node_id, None)
        ev = self.nodes.get(node_id)
        if ev is not None:
            ev.set()

    def wake_all_local(self) -> None:
        """Wake-ups may have been missed (the listener reconnected): every long-poll here
        asks the store again, and the scheduler runs a pass."""

        def everyone() -> None:
            self.quiet.clear()
            for ev in self.nodes.values():
                ev.set()
            self.scheduler.set()

        self._call(everyone)


class Runtime:
    """Everything a request handler or loop needs."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.auth = Authenticator(db)
        self.leases = LeaseBook()
        self.wakeups = Wakeups()
        self.replica = settings.replica or f"{socket.gethostname()}-{os.getpid()}"
        self.leadership = Leadership(db, self.replica)
        self.bus = Bus(
            db,
            self.replica,
            deliver=self.wakeups.deliver,
            leads=lambda: self.leadership.is_leader,
            reconnected=self.wakeups.wake_all_local,
            forget=self.auth.drop,
        )
        self.wakeups.publish = self.bus.publish
        self.auth.on_forget = self.bus.publish_forget
        db.on_commit_wake = self.wakeups.wake_nodes  # e.g. a broken gang's members, to stop
        self.metrics = Metrics()
        # per-GPU series and totals
        self.metrics.registry.register(StoreCollector(db, self.leases.energy_counters))
        self.health_seen: dict[str, str] = {}  # node -> its last health readings, as judged
        self.ready_seen: dict[str, frozenset[str]] = {}  # node -> its replicas reported ready
        # services: the gateway forwards through the agents' tunnels (docs/services.md)
        from gpunet.services.gateway import Gateway

        self.tunnels = TunnelHub()  # the agents' tunnels to their service replicas
        # the scheduler's child process (loops.pass_worker), from start to stop on every
        # replica, so a newly elected leader's first pass does not wait for one to start
        self.pass_worker: PassWorker | None = None
        self.gateway = Gateway(db, self.tunnels.request, self.metrics)
        self._checkpoints: CheckpointStore | None = None

    def services_changed(self) -> None:
        """A service was deployed, scaled or stopped, or a replica's readiness changed: the
        gateway re-reads its routes and the service loop reconciles now."""
        self.gateway.stale.set()
        self.gateway.kicked.set()
        if self.wakeups.publish is not None:
            self.wakeups.publish(True, [])  # the service loop may run on another replica

    @property
    def checkpoints(self) -> CheckpointStore:
        """The checkpoint store, made on first use (most coordinators' tests never need it)."""
        if self._checkpoints is None:
            from gpunet.config import home
            from gpunet.services.checkpoint_store import store_for

            root = self.settings.checkpoint_dir
            self._checkpoints = store_for(
                self.settings.checkpoint_store, Path(root) if root else home() / "checkpoints"
            )
        return self._checkpoints
