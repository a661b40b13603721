"""The coordinator's background loops stop when it shuts down, whatever they are doing.

On Python 3.11 a cancellation can be swallowed (``asyncio.wait_for`` drops one that lands as
its inner wait completes), and a loop that swallowed it would run forever and hang shutdown.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from helpers import fast_settings

from gpunet.loops.background import start_all, stop_all
from gpunet.services.runtime import Runtime
from gpunet.store.db import Database


def test_loops_stop_at_shutdown_however_the_cancellation_lands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gpunet.db'}"
    db = Database(url)
    db.migrate()

    async def trials() -> int:
        stuck = 0
        rng = random.Random(7)
        for _ in range(40):
            rt = Runtime(fast_settings(url, scheduler_interval_s=0.005), db)
            rt.wakeups.bind(asyncio.get_running_loop())
            tasks = start_all(rt)
            await asyncio.sleep(rng.uniform(0, 0.02))
            rt.wakeups.wake_scheduler()  # the scheduler's wait completes as the cancel lands
            await stop_all(rt, tasks, grace_s=2.0)
            stuck += sum(not t.done() for t in tasks)
            for t in tasks:
                t.cancel()
        return stuck

    try:
        assert asyncio.run(trials()) == 0
    finally:
        db.dispose()
