"""How a node keeps a stranger's job away from its host, and the runtimes it offers. Pure.

Levels are ordered ``none < sandbox < container``: a job that needs a level runs on any node
that offers at least that level.
"""

from __future__ import annotations

import re
from enum import StrEnum

# a container runtime's short name, as agents report it (podman, docker, nerdctl, ...)
RUNTIME_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_RUNTIMES = 8
# an image reference (registry/name:tag or @sha256:...): no whitespace, bounded length
MAX_IMAGE_LEN = 512


class Isolation(StrEnum):
    """A node's isolation level (what it offers) or a job's (the least it accepts)."""

    NONE = "none"
    SANDBOX = "sandbox"
    CONTAINER = "container"

    @property
    def rank(self) -> int:
        return _RANK[self]

    # Compare by level, not by the text (str's order would put "container" first).
    def __lt__(self, other: str) -> bool:
        return self.rank < Isolation(other).rank

    def __le__(self, other: str) -> bool:
        return self.rank <= Isolation(other).rank

    def __gt__(self, other: str) -> bool:
        return self.rank > Isolation(other).rank

    def __ge__(self, other: str) -> bool:
        return self.rank >= Isolation(other).rank


_RANK = {Isolation.NONE: 0, Isolation.SANDBOX: 1, Isolation.CONTAINER: 2}
LEVELS = tuple(Isolation)  # in order, lowest first


def check_runtimes(names: list[str]) -> list[str]:
    """Validate a node's runtime names; raises ValueError naming the bad one. Sorted, unique."""
    if len(names) > MAX_RUNTIMES:
        raise ValueError(f"at most {MAX_RUNTIMES} runtimes")
    for n in names:
        if not RUNTIME_NAME.match(n):
            raise ValueError(f"{n!r} is not a runtime name (lowercase letters, digits, - or _)")
    return sorted(set(names))


def check_image(ref: str) -> str:
    """Validate a container image reference; raises ValueError with the reason."""
    if not ref:
        raise ValueError("must not be empty")
    if len(ref) > MAX_IMAGE_LEN:
        raise ValueError(f"at most {MAX_IMAGE_LEN} characters")
    if any(c.isspace() for c in ref):
        raise ValueError("must not contain whitespace")
    if not ref.isprintable():
        raise ValueError("must not contain control characters")
    if ref.startswith("-"):  # it lands on a runtime's command line: never an option
        raise ValueError("must not start with '-'")
    return ref
