"""Prometheus metrics of the coordinator."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gpunet.services.replicas import SINGLETON_LOOPS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.heartbeat_lag = Histogram(
            "gpunet_heartbeat_interval_seconds",
            "Seconds between consecutive heartbeats of a node",
            buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 60),
            registry=self.registry,
        )
        self.heartbeat_lag_max = Gauge(
            "gpunet_heartbeat_lag_max_seconds",
            "Longest time since any online node's last heartbeat",
            registry=self.registry,
        )
        self.schedule_latency = Histogram(
            "gpunet_scheduling_latency_seconds",
            "Seconds from a job's submit (or re-queue) to its assignment",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.schedule_tick = Histogram(
            "gpunet_scheduler_tick_seconds",
            "Seconds one scheduler pass took",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.work_polls = Counter(
            "gpunet_work_polls",
            "Work long-polls answered (GET /v1/agent/work)",
            registry=self.registry,
        )
        self.work_items = Counter(
            "gpunet_work_items",
            "Attempts sent to agents with their work polls, to start or to stop",
            ["kind"],
            registry=self.registry,
        )
        self.report_requests = Counter(
            "gpunet_agent_report_requests",
            "Attempt report requests taken from agents, by path: started, logs, finished (one "
            "report each) or reports (a batch)",
            ["path"],
            registry=self.registry,
        )

        self.late_successes = Counter(
            "gpunet_late_successes",
            "Successes reported after their attempt's lease lapsed: kept (the job's retry had "
            "not started) or discarded as duplicates (it had)",
            ["outcome"],
            registry=self.registry,
        )

        self.leader = Gauge(
            "gpunet_leader",
            "1 for each singleton loop this replica runs as the elected leader, else 0",
            ["replica", "loop"],
            registry=self.registry,
        )
        self.leader_epoch = Gauge(
            "gpunet_leader_epoch",
            "The fencing epoch of the current leader, as this replica last read it",
            registry=self.registry,
        )

        # services (docs/services.md): what the gateway forwarded and the replicas it has
        self.service_requests = Counter(
            "gpunet_service_requests",
            "Requests the gateway answered, by service and HTTP status",
            ["service", "code"],
            registry=self.registry,
        )
        self.service_latency = Histogram(
            "gpunet_service_request_seconds",
            "Seconds from a request's arrival at the gateway to the end of its answer",
            ["service"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.service_inflight = Gauge(
            "gpunet_service_inflight",
            "Requests of a service forwarded and not yet answered, or queued at the gateway",
            ["service"],
            registry=self.registry,
        )
        self.service_replicas = Gauge(
            "gpunet_service_replicas",
            "A service's replicas: ready, starting (not ready yet), desired (the autoscaler's)",
            ["service", "state"],
            registry=self.registry,
        )

    def set_leader(self, view: dict[str, Any]) -> None:
        """Which loops this replica leads (services.replicas.Leadership.view)."""
        leads = set(view["leads"])
        for loop in SINGLETON_LOOPS:
            self.leader.labels(view["replica"], loop).set(1 if loop in leads else 0)
        if view["epoch"] is not None:
            self.leader_epoch.set(view["epoch"])

    def count_finishes(self, outcomes: list[str]) -> None:
        """Count the late successes among how finish reports were taken (services.agents)."""
        for o in outcomes:
            if o in ("kept", "discarded"):
                self.late_successes.labels(o).inc()

    def count_work(self, start: int, stop: int) -> None:
        """Count one answered work poll and the attempts it carried."""
        self.work_polls.inc()
        if start:
            self.work_items.labels("start").inc(start)
        if stop:
            self.work_items.labels("stop").inc(stop)

    def render(self) -> bytes:
        return generate_latest(self.registry)
