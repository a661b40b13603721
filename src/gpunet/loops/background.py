"""The coordinator's background loops: scheduler, lease reaper, telemetry flush, archive
collection.

Every replica flushes the heartbeats it heard; only the leader (services.replicas) runs the
singleton loops: the leadership loop starts them when this replica is elected and cancels
them when it is deposed (a pass already in a thread is refused by fencing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.concurrency import run_in_threadpool

from gpunet.loops import metering
from gpunet.loops.pass_worker import BrokenProcessPool, PassOrder, PassWorker
from gpunet.services import blobs, leases, scheduling, serving, tiers
from gpunet.services.replicas import Deposed
from gpunet.services.runtime import Runtime

log = logging.getLogger("gpunet.loops")


async def scheduler_loop(rt: Runtime) -> None:
    """Run a pass whenever something changed (submit, finish, node join) or every interval:
    in the child process ``rt.pass_worker`` when there is one, else in a thread."""
    ev = rt.wakeups.scheduler
    st = rt.settings
    terms = metering.terms(st)
    while not rt.wakeups.closing:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
        # that lands as the event is set
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(st.scheduler_interval_s):
                await ev.wait()
        ev.clear()
        t = time.perf_counter()
        worker = rt.pass_worker
        try:
            if worker is not None:
                result = await worker.tick(
                    PassOrder(
                        st.policy,
                        terms,
                        st.fair_share_half_life_s,
                        st.max_starts_per_pass,
                        rt.leadership.epoch if rt.leadership.is_leader else None,
                        rt.replica,
                    )
                )
            else:
                result = await run_in_threadpool(
                    lambda: scheduling.tick(
                        rt.db,
                        st.policy,
                        terms,
                        half_life_s=st.fair_share_half_life_s,
                        max_starts=st.max_starts_per_pass,
                        fence=rt.leadership.fence,
                    )
                )
        except Deposed as exc:
            log.warning("scheduler pass refused: %s", exc)
            await asyncio.sleep(0.5)
            continue
        except BrokenProcessPool:
            log.error("the scheduler's process died: starting another")
            await asyncio.sleep(0.5)
            ev.set()
            continue
        except Exception:
            log.exception("scheduler pass failed")
            await asyncio.sleep(0.5)
            continue
        rt.metrics.schedule_tick.observe(time.perf_counter() - t)
        for w in result.waits_s:
            rt.metrics.schedule_latency.observe(w)
        rt.wakeups.wake_nodes(result.nodes)
        if result.more:
            ev.set()  # the plan held more starts than one pass applies: the next now


async def gateway_loop(rt: Runtime) -> None:
    """Every replica: re-read the services' routes (every second, and at once when a
    readiness changed) and feed the autoscaler one sample a second."""
    gw = rt.gateway
    next_sample = time.monotonic()
    while not rt.wakeups.closing:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, next_sample - time.monotonic())):
                await gw.stale.wait()
        gw.stale.clear()
        try:
            await gw.refresh()
        except Exception:
            log.exception("reading the services' routes failed")
        t = time.monotonic()
        if t >= next_sample:
            gw.sample(t)
            next_sample = t + 1.0


async def services_loop(rt: Runtime) -> None:
    """The leader: the autoscaler's decisions, then replicas added or stopped to match them,
    every second or at once when a request waits at zero or a service changed."""
    gw = rt.gateway
    while not rt.wakeups.closing:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await gw.kicked.wait()
        if gw.kicked.is_set():
            gw.kicked.clear()
            await gw.refresh()  # what changed, and the request waiting at zero, count now
            gw.sample(time.monotonic())
        decisions = gw.decisions(time.monotonic())
        try:
            done = await run_in_threadpool(
                serving.reconcile_all,
                rt.db,
                fence=rt.leadership.fence,
                decisions=decisions,
                outstanding=dict(gw.outstanding),
                draining=dict(gw.draining),
            )
        except Deposed as exc:
            log.warning("services pass refused: %s", exc)
            continue
        except Exception:
            log.exception("services pass failed")
            await asyncio.sleep(0.5)
            continue
        gw.draining = done.draining  # out of the rotation; stopped once their requests end
        if decisions or done.added or done.stopped:
            gw.stale.set()
        if done.added:
            rt.wakeups.wake_scheduler()
        if done.wake:
            rt.wakeups.wake_nodes(done.wake)


async def reaper_loop(rt: Runtime) -> None:
    while not rt.wakeups.closing:
        await asyncio.sleep(rt.settings.reaper_interval_s)
        if rt.wakeups.closing:  # draining: heartbeats cannot reach us, so judge no lease
            return
        try:
            gone = await run_in_threadpool(
                lambda: leases.reap(
                    rt.db,
                    rt.leases,
                    rt.settings.lease_timeout_s,
                    fence=rt.leadership.fence,
                    leading_since=rt.leadership.since,
                )
            )
        except Deposed as exc:
            log.warning("lease reaper refused: %s", exc)
            continue
        except Exception:
            log.exception("lease reaper failed")
            continue
        if gone:
            log.warning("nodes offline (lease lapsed): %s", ", ".join(gone))
            rt.wakeups.wake_scheduler()


async def flush_loop(rt: Runtime) -> None:
    while not rt.wakeups.closing:
        await asyncio.sleep(rt.settings.telemetry_flush_s)
        try:
            await run_in_threadpool(leases.flush_telemetry, rt.db, rt.leases)
        except Exception:
            log.exception("telemetry flush failed")


async def tiers_loop(rt: Runtime) -> None:
    """Automatic tier mode: apply the tier rule's proposals as ``rule:tiers``."""
    while rt.settings.auto_tiers and not rt.wakeups.closing:
        await asyncio.sleep(rt.settings.tier_interval_s)
        try:
            moved = await run_in_threadpool(tiers.apply_as, rt.db, "rule:tiers")
        except Exception:
            log.exception("automatic tier pass failed")
            continue
        if moved:
            log.warning(
                "tier moves applied: %s",
                ", ".join(f"{p['gpu_id']} -> {p['proposed']}" for p in moved),
            )
            rt.wakeups.wake_scheduler()


async def blob_gc_loop(rt: Runtime) -> None:
    """Delete archives no unfinished job needs, once their grace has passed."""
    while not rt.wakeups.closing:
        await asyncio.sleep(rt.settings.blob_gc_interval_s)
        try:
            gone = await run_in_threadpool(blobs.collect, rt.db, rt.settings.blob_grace_s)
        except Exception:
            log.exception("archive collection failed")
            continue
        if gone:
            log.info("collected %d unreferenced archives", len(gone))


async def checkpoint_gc_loop(rt: Runtime) -> None:
    """Drop torn checkpoint uploads and finished jobs' checkpoints; delete unused objects."""
    from gpunet.services import checkpoints

    st = rt.settings
    while not rt.wakeups.closing:
        await asyncio.sleep(st.blob_gc_interval_s)
        try:
            dropped, gone = await run_in_threadpool(
                lambda: checkpoints.collect(
                    rt.db,
                    rt.checkpoints,
                    pending_grace_s=st.checkpoint_pending_s,
                    retention_s=st.checkpoint_retention_s,
                    object_grace_s=st.checkpoint_object_grace_s,
                )
            )
        except Exception:
            log.exception("checkpoint collection failed")
            continue
        if dropped or gone:
            log.info("dropped %d checkpoints, deleted %d objects", dropped, gone)


async def stop_all(rt: Runtime, tasks: list[asyncio.Task[None]], grace_s: float = 10.0) -> None:
    """Stop the loops. Each also checks ``closing`` at every turn: a cancellation that lands
    while a pass runs in the thread pool can be absorbed there, and shutdown must not hang."""
    rt.wakeups.close()
    for t in tasks:
        t.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=grace_s)
    for t in stuck:
        log.error("background loop %s did not stop within %.0f s", t.get_coro(), grace_s)
    worker, rt.pass_worker = rt.pass_worker, None
    if worker is not None:
        await run_in_threadpool(worker.close)


SINGLETONS = (
    scheduler_loop,
    reaper_loop,
    metering.meter_loop,
    tiers_loop,
    blob_gc_loop,
    checkpoint_gc_loop,
    services_loop,
)


async def leadership_loop(rt: Runtime) -> None:
    """Run the singleton loops while this replica leads (always, on SQLite)."""
    led: list[asyncio.Task[None]] = []
    try:
        while not rt.wakeups.closing:
            try:
                leads = await run_in_threadpool(rt.leadership.check)
            except Exception:
                log.exception("leader election failed")
                leads = False
            if leads and not led:
                led = [asyncio.create_task(f(rt)) for f in SINGLETONS]
                rt.wakeups.wake_all_local()  # a new leader looks at everything once
            elif not leads and led:
                log.warning("replica %s no longer leads: stopping its singleton loops", rt.replica)
                for t in led:
                    t.cancel()
                await asyncio.wait(led, timeout=5)
                led = []
            rt.metrics.set_leader(rt.leadership.view())
            await asyncio.sleep(rt.settings.leader_check_s)
    finally:
        for t in led:
            t.cancel()
        if led:
            await asyncio.wait(led, timeout=5)
        await run_in_threadpool(rt.leadership.close)


def start_all(rt: Runtime) -> list[asyncio.Task[None]]:
    st = rt.settings
    if st.scheduler_process if st.scheduler_process is not None else rt.db.is_postgres:
        rt.pass_worker = PassWorker(rt.db.url)  # its child starts now, not at the first pass
    return [asyncio.create_task(f(rt)) for f in (leadership_loop, flush_loop, gateway_loop)]
