"""Retrying calls to the coordinator: backoff that resets the moment the coordinator answers."""

from __future__ import annotations

import asyncio
import contextlib

BASE_DELAY_S = 0.2
MAX_DELAY_S = 5.0


class Answers:
    """Signals that the coordinator answered some request (any status): a retry waiting out
    its backoff goes again at once, from the base delay, rather than sleep on while the
    coordinator is back."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def answered(self) -> None:
        self._event.set()
        self._event = asyncio.Event()  # waits that start later wait for the next answer

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if an answer came meanwhile."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
            return True
        return False


class Backoff:
    """Exponential backoff (base to cap, doubling) that restarts from the base as soon as the
    coordinator answers anything."""

    def __init__(self, answers: Answers, base: float = BASE_DELAY_S, cap: float = MAX_DELAY_S):
        self.answers = answers
        self.base = base
        self.cap = cap
        self.delay = base

    async def pause(self) -> None:
        if await self.answers.wait(self.delay):
            self.delay = self.base
        else:
            self.delay = min(self.delay * 2, self.cap)
