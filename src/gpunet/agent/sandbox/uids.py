"""A pool of dedicated unprivileged uids: one per running attempt, so attempts cannot touch
each other's files or processes."""

from __future__ import annotations

DEFAULT_FIRST_UID = 64000
DEFAULT_UID_COUNT = 64


class UidPoolExhausted(RuntimeError):
    """Every uid of the pool runs an attempt."""


class UidPool:
    """uids ``first .. first+count-1``; each uid doubles as its own gid."""

    def __init__(self, first: int = DEFAULT_FIRST_UID, count: int = DEFAULT_UID_COUNT) -> None:
        if first < 1000:
            raise ValueError(f"first uid {first}: must be >= 1000, away from system accounts")
        if count < 1:
            raise ValueError(f"uid count {count}: must be at least 1")
        self.first = first
        self.count = count
        self._free = list(range(first, first + count))
        self._used: set[int] = set()

    def acquire(self) -> int:
        if not self._free:
            raise UidPoolExhausted(f"all {self.count} sandbox uids are in use")
        uid = self._free.pop(0)
        self._used.add(uid)
        return uid

    def release(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.append(uid)  # last in the queue: a reused uid is the oldest free one

    @property
    def in_use(self) -> int:
        return len(self._used)

    def describe(self) -> str:
        return f"uids {self.first}-{self.first + self.count - 1}"
