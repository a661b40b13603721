"""The gateway: requests to ``/services/NAME/...`` (and, by model, to the OpenAI-compatible
routes) forwarded to a ready replica through its agent's tunnel.

Per request: the route of the caller's account (another account's service is not found, like
a missing one); a replica chosen by core.serving.balance (least outstanding, optional
affinity); the request forwarded through the tunnel of the replica's node
(gpunet.tunnel.hub); the answer streamed back as it arrives. A request that could not be
forwarded (the tunnel was gone, the replica refused the connection) is retried on another
replica; one that failed after it was forwarded is not (it may have had effects). While no
replica is ready the request waits, up to the service's ``queue_limit`` requests, for as long as
a replica may take to start (``readiness.timeout_s``, at most ``MAX_WAIT_S``).

The gateway also feeds the autoscaler: once a second, per service, the requests in flight
(forwarded and queued) and those that arrived (core.serving.autoscale.Sample); the service
loop asks it for decisions. Everything here is in memory and per coordinator replica; the
routing table is re-read from the store every second and when a replica's readiness changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from gpunet.core.serving import autoscale, balance
from gpunet.errors import BadGateway, ForwardFailed, NotForwarded, NotFound, Unavailable
from gpunet.services.auth import Principal
from gpunet.services.metrics import Metrics
from gpunet.services.serving import Route, routing_table, scaling_policy
from gpunet.store.db import Database

log = logging.getLogger(__name__)

MAX_WAIT_S = 120.0  # longest a request waits for a replica to become ready
MAX_TRIES = 4  # replicas one request may be offered to (not forwarded: try the next)
# request headers never passed to a replica: hop-by-hop ones, and the caller's credentials
DROPPED_REQUEST = frozenset(
    {
        "authorization",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
DROPPED_RESPONSE = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


class Answer(Protocol):
    """A replica's answer as the tunnel hands it over (tunnel.hub.TunnelResponse): the body's
    chunks by ``async for``, each as soon as it arrives."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


# (node id, attempt id, method, path with query, headers, body) -> the replica's answer;
# raises NotForwarded (safe to send elsewhere) or ForwardFailed (tunnel.hub.TunnelHub.request)
Forward = Callable[[str, str, str, str, list[tuple[str, str]], bytes], Awaitable[Answer]]


@dataclass
class Forwarded:
    """An answer on its way to the client: status, headers, and the body's chunks."""

    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    replica: str
    reason: str  # why this replica (the balancer's words)


def forwarded_headers(
    headers: Iterable[tuple[str, str]], client: str, scheme: str, service: str
) -> list[tuple[str, str]]:
    """A request's headers as a replica gets them: without hop-by-hop ones and the caller's
    credentials, with ``X-Forwarded-For``, ``-Proto`` and ``-Prefix`` (``/services/NAME``)."""
    out = [(k, v) for k, v in headers if k.lower() not in DROPPED_REQUEST]
    out += [
        ("x-forwarded-for", client),
        ("x-forwarded-proto", scheme),
        ("x-forwarded-prefix", f"/services/{service}"),
    ]
    return out


class Gateway:
    """Routes, per-replica outstanding counts, the waiting queue and the autoscaler's samples."""

    def __init__(self, db: Database, forward: Forward, metrics: Metrics) -> None:
        self.db = db
        self.forward = forward
        self.metrics = metrics
        self.by_name: dict[tuple[str, str], Route] = {}  # (account id, name)
        self.by_model: dict[tuple[str, str], Route] = {}  # (account id, model)
        self.by_id: dict[str, Route] = {}
        self.outstanding: dict[str, int] = defaultdict(int)  # attempt id -> forwarded, unanswered
        self.queued: dict[str, int] = defaultdict(int)  # service id -> waiting for a replica
        self.arrived: dict[str, int] = defaultdict(int)  # service id -> since the last sample
        # replicas on their way out (scaled down): no new request; stopped when theirs end
        self.draining: dict[str, float] = {}  # attempt id -> since (epoch seconds)
        self.scalers: dict[str, autoscale.ScalerState] = {}
        self.decided: dict[str, autoscale.Decision] = {}
        self.changed = asyncio.Condition()  # notified when the routing table was re-read
        self.kicked = asyncio.Event()  # a request waits at zero: decide now, not in a second
        self.stale = asyncio.Event()  # a readiness changed: re-read the routes now
        self._seed = itertools.count()
        self._counted: dict[tuple[str, int], tuple[Any, Any]] = {}  # see _count

    # ---- routing table ----------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read the routing table (every second, and when a readiness changed)."""
        routes = await run_in_threadpool(routing_table, self.db)
        self.install(routes)
        async with self.changed:
            self.changed.notify_all()

    def install(self, routes: Iterable[Route]) -> None:
        by_name, by_model, by_id = {}, {}, {}
        for r in routes:
            by_name[(r.account_id, r.name)] = r
            by_id[r.service_id] = r
            if r.model:
                by_model[(r.account_id, r.model)] = r
        self.by_name, self.by_model, self.by_id = by_name, by_model, by_id
        live = {a for r in by_id.values() for a, _ in r.replicas}
        for gone in [a for a, n in self.outstanding.items() if n <= 0 and a not in live]:
            del self.outstanding[gone]
        for gone in [s for s in self.scalers if s not in by_id]:
            del self.scalers[gone]
            self.decided.pop(gone, None)

    def route(self, who: Principal, name: str) -> Route:
        """The caller's running service ``name``; another account's is not found."""
        r = self.by_name.get((who.account_id, name))
        if r is None and who.is_admin:
            r = next((x for x in self.by_id.values() if x.name == name), None)
        if r is None or (who.service_id is not None and r.service_id != who.service_id):
            raise NotFound(f"no service {name!r}", field="name")
        return r

    def model_route(self, who: Principal, model: str) -> Route:
        r = self.by_model.get((who.account_id, model))
        if r is None or (who.service_id is not None and r.service_id != who.service_id):
            raise NotFound(f"no service serves model {model!r}", field="model")
        return r

    def models(self, who: Principal) -> list[Route]:
        return sorted(
            (
                r
                for (acct, _), r in self.by_model.items()
                if acct == who.account_id and who.service_id in (None, r.service_id)
            ),
            key=lambda r: r.model or "",
        )

    # ---- forwarding -----------------------------------------------------------------------
    async def _wait_for_replica(self, route: Route, deadline: float) -> Route:
        """Wait (queued) until the service has a ready replica; raise Unavailable if the queue
        is full or none becomes ready in time."""
        sid = route.service_id
        policy = scaling_policy(route.spec, route.min_replicas, route.max_replicas)
        if not autoscale.queue_admits(policy, self.queued[sid]):
            raise Unavailable(
                f"service {route.name!r} has no replica ready and {self.queued[sid]} requests "
                "waiting (scaling.queue_limit): try again later"
            )
        self.queued[sid] += 1
        self.kicked.set()
        try:
            while True:
                r = self.by_id.get(sid)
                if r is None:
                    raise NotFound(f"no service {route.name!r}", field="name")
                if any(a not in self.draining for a, _ in r.replicas):
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(
                        f"no replica of service {route.name!r} became ready in time: "
                        "try again later"
                    )
                async with self.changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))
        finally:
            self.queued[sid] -= 1

    async def send(
        self,
        route: Route,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Forwarded:
        """Forward one request to a ready replica of ``route``: see the module's docstring.
        ``headers`` are sent as given (see :func:`forwarded_headers`)."""
        sid = route.service_id
        self.arrived[sid] += 1
        started = time.monotonic()
        readiness = (route.spec.get("service") or {}).get("readiness") or {}
        deadline = started + min(MAX_WAIT_S, float(readiness.get("timeout_s", MAX_WAIT_S)))
        rule = _affinity(route.spec)
        key = rule.key_of(dict(headers)) if rule else None
        tried: set[str] = set()
        for _ in range(MAX_TRIES):
            route = self.by_id.get(sid, route)
            if not any(a not in self.draining for a, _ in route.replicas):
                route = await self._wait_for_replica(route, deadline)
            nodes = dict(route.replicas)
            pool = [
                balance.Replica(a, self.outstanding[a], draining=a in self.draining) for a in nodes
            ]
            choice = balance.choose(pool, key=key, exclude=tried, seed=next(self._seed))
            if choice is None:  # every ready replica was tried: wait for a change
                async with self.changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), timeout=1.0)
                tried.clear()
                continue
            att = choice.replica
            self.outstanding[att] += 1
            try:
                answer = await self.forward(nodes[att], att, method, path, headers, body)
            except NotForwarded as exc:
                self.outstanding[att] -= 1
                log.info("service %s: %s not forwarded (%s): next replica", route.name, att, exc)
                tried.add(att)
                continue
            except ForwardFailed as exc:
                self.outstanding[att] -= 1
                self._count(route, 502, started)
                raise BadGateway(f"replica {att} of service {route.name!r} failed: {exc}") from exc
            except BaseException:
                self.outstanding[att] -= 1
                raise
            kept = [(k, v) for k, v in answer.headers if k.lower() not in DROPPED_RESPONSE]
            return Forwarded(
                answer.status, kept, self._stream(route, att, answer, started), att, choice.reason
            )
        self._count(route, 503, started)
        raise Unavailable(
            f"service {route.name!r}: no replica took the request after {MAX_TRIES} tries"
        )

    async def _stream(
        self, route: Route, att: str, answer: Answer, started: float
    ) -> AsyncIterator[bytes]:
        status = answer.status
        try:
            async for chunk in answer:
                yield chunk
        except ForwardFailed:
            status = 502  # the answer broke off: the client sees a cut body
            log.warning("service %s: replica %s broke off its answer", route.name, att)
        finally:
            self.outstanding[att] -= 1
            with contextlib.suppress(Exception):
                await answer.aclose()
            self._count(route, status, started)

    def _count(self, route: Route, status: int, started: float) -> None:
        # the labelled children, looked up once (labels() validates and locks every call)
        key = (route.name, status)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = (
                self.metrics.service_requests.labels(route.name, str(status)),
                self.metrics.service_latency.labels(route.name),
            )
        child[0].inc()
        child[1].observe(time.monotonic() - started)

    # ---- autoscaling ----------------------------------------------------------------------
    def inflight(self, route: Route) -> int:
        return self.queued[route.service_id] + sum(
            max(0, self.outstanding[a]) for a, _ in route.replicas
        )

    def sample(self, t: float) -> None:
        """One autoscaler sample per service (call once a second), and the gauges."""
        for sid, route in self.by_id.items():
            policy = scaling_policy(route.spec, route.min_replicas, route.max_replicas)
            state = self.scalers.get(sid) or autoscale.initial_state(t, route.desired)
            n = self.inflight(route)
            arrived, self.arrived[sid] = self.arrived[sid], 0
            self.scalers[sid] = autoscale.observe(policy, state, autoscale.Sample(t, n, arrived))
            m = self.metrics
            m.service_inflight.labels(route.name).set(n)
            m.service_replicas.labels(route.name, "ready").set(len(route.replicas))
            m.service_replicas.labels(route.name, "starting").set(route.starting)
            m.service_replicas.labels(route.name, "desired").set(route.desired)

    def decisions(self, t: float) -> list[tuple[str, int, str]]:
        """(service id, count, reason) of the services whose wanted count should change."""
        out = []
        for sid, route in self.by_id.items():
            state = self.scalers.get(sid)
            if state is None:
                continue
            # the bounds may have changed (services scale): the stored count is the truth
            state = replace(state, desired=route.desired)
            policy = scaling_policy(route.spec, route.min_replicas, route.max_replicas)
            decision, self.scalers[sid] = autoscale.decide(
                policy, state, t, ready=len(route.replicas)
            )
            self.decided[sid] = decision
            if decision.desired != route.desired:
                out.append((sid, decision.desired, decision.reason))
        return out


def _affinity(spec: dict[str, Any]) -> balance.AffinityRule | None:
    a = (spec.get("service") or {}).get("affinity")
    if not a:
        return None
    return balance.AffinityRule(a["header"], a.get("prefix_chars"))
