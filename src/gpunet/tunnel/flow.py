"""Per-stream flow control shared by both ends of the tunnel (gpunet.tunnel.protocol).

:class:`Credit` is what a stream may still send; :class:`Inbox` holds what it received and
not yet consumed, never more than the window it granted.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Closed(Exception):
    """The stream or its connection ended; ``reason`` says how."""


class Credit:
    """Bytes of DATA a stream may still send; a sender with none waits for a grant."""

    __slots__ = ("available", "_waiter", "_error")

    def __init__(self, initial: int) -> None:
        self.available = initial
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def grant(self, n: int) -> None:
        self.available += n
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Wake a waiting sender with ``exc`` (the stream was reset or its connection lost)."""
        self._error = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    async def take(self, wanted: int) -> int:
        """Between 1 and ``wanted`` bytes the caller may send now, waiting for a grant."""
        while self.available <= 0:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        n = min(wanted, self.available)
        self.available -= n
        return n


class Inbox:
    """Chunks received on a stream, in order, then its end or its failure. The sender may
    never have more than ``window`` unconsumed bytes here: :meth:`put` refuses more."""

    __slots__ = ("window", "buffered", "_chunks", "_ended", "_error", "_waiter")

    def __init__(self, window: int) -> None:
        self.window = window
        self.buffered = 0
        self._chunks: deque[bytes] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def put(self, chunk: bytes) -> bool:
        """Add a chunk; False (and nothing added) when it would overrun the window."""
        if self.buffered + len(chunk) > self.window:
            return False
        self.buffered += len(chunk)
        self._chunks.append(chunk)
        self._wake()
        return True

    def end(self) -> None:
        self._ended = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._ended:
            self._error = exc
        self._wake()

    @property
    def ready(self) -> bool:
        """Whether :meth:`get` answers without waiting."""
        return bool(self._chunks) or self._ended or self._error is not None

    @property
    def finished(self) -> bool:
        return (self._ended or self._error is not None) and not self._chunks

    async def get(self) -> bytes | None:
        """The next chunk, None at the end; raises the stream's failure. The caller grants
        the chunk's length back to the sender once it has consumed it."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        return chunk
