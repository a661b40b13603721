"""Checkpoint rules, pure: what a manifest may name, and which checkpoints a job keeps.

A checkpoint is the content of a job's ``$GPUNET_CHECKPOINT_DIR``: regular files only, each
named by its path relative to the directory and addressed by the sha256 of its content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_PATH_CHARS = 1024  # the column's width
MAX_FILES = 10_000  # files in one checkpoint
MODE_BITS = 0o755  # what a restored file keeps of its mode: no setuid, no group/other write
SUBDIR = ".gpunet-checkpoint"  # the checkpoint directory, inside the attempt's working directory


class ManifestError(ValueError):
    """A manifest entry that may not be stored or restored; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class FileEntry:
    """One regular file of a checkpoint."""

    path: str
    digest: str
    size: int
    mode: int


def check_path(path: str) -> str | None:
    """Why ``path`` cannot name a file inside a checkpoint directory, or None when it can:
    relative, '/'-separated, no empty, '.' or '..' part, no NUL, within the column."""
    if not path:
        return "must not be empty"
    if len(path) > MAX_PATH_CHARS:
        return f"at most {MAX_PATH_CHARS} characters"
    if "\x00" in path or "\\" in path:
        return "must not contain NUL or backslashes"
    if path.startswith("/"):
        return "must be relative"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "must not have empty, '.' or '..' parts"
    return None


def check_manifest(entries: Sequence[FileEntry], max_files: int = MAX_FILES) -> None:
    """Refuse a manifest the store must not take: too many files, a bad path or digest, a
    path given twice, or a path that is also another file's directory."""
    if len(entries) > max_files:
        raise ManifestError("files", f"at most {max_files} files (got {len(entries)})")
    seen: set[str] = set()
    for i, e in enumerate(entries):
        why = check_path(e.path)
        if why:
            raise ManifestError(f"files[{i}].path", why)
        if not DIGEST.match(e.digest):
            raise ManifestError(f"files[{i}].digest", "must be sha256:<64 lowercase hex digits>")
        if e.size < 0:
            raise ManifestError(f"files[{i}].size", "must not be negative")
        if e.path in seen:
            raise ManifestError(f"files[{i}].path", f"{e.path!r} is given twice")
        seen.add(e.path)
    dirs = {
        "/".join(e.path.split("/")[:k]) for e in entries for k in range(1, e.path.count("/") + 1)
    }
    for i, e in enumerate(entries):
        if e.path in dirs:
            raise ManifestError(f"files[{i}].path", f"{e.path!r} is also a directory")


def restored_mode(mode: int) -> int:
    """The mode a restored file gets: its owner's read and execute bits kept, always
    writable by its owner, nothing special."""
    return (mode & MODE_BITS) | 0o600


def to_prune(complete_ids_newest_first: Sequence[str], keep: int) -> list[str]:
    """The complete checkpoints a job no longer keeps: all but the ``keep`` newest."""
    return list(complete_ids_newest_first[max(keep, 1) :])


def distinct_bytes(entries: Sequence[FileEntry]) -> int:
    """Bytes the entries take in a content-addressed store: each digest once."""
    return sum({e.digest: e.size for e in entries}.values())
