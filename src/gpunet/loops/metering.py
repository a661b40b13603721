"""The metering loop: long-running attempts are settled periodically, not only at the end."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from gpunet.services import billing, leases
from gpunet.services.runtime import Runtime
from gpunet.settings import Settings

log = logging.getLogger("gpunet.loops")


def terms(settings: Settings) -> billing.Terms:
    return billing.Terms(fee_rate=settings.network_fee, hold_hours=settings.hold_hours)


async def meter_loop(rt: Runtime) -> None:
    while not rt.wakeups.closing:
        await asyncio.sleep(rt.settings.meter_interval_s)
        try:
            stopped = await run_in_threadpool(
                lambda: billing.meter_running(rt.db, leases.last_heard(rt.db, rt.leases))
            )
        except Exception:
            log.exception("metering pass failed")
            continue
        if stopped:
            log.warning("stopping attempts out of credits: %s", ", ".join(stopped))
            rt.wakeups.wake_nodes(sorted(set(stopped.values())))
