"""Where checkpoint files live: content-addressed objects, per account, behind a small
interface. ``FileCheckpointStore`` keeps them under the coordinator's data directory; an
S3-compatible store can implement the same protocol (see docs/checkpoints.md).

Keys are ``<account id>/<digest>``: objects are shared between an account's checkpoints (an
unchanged file is stored once) but never between accounts, so no tenant can learn whether
another holds some content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

from gpunet.core.checkpoints import DIGEST
from gpunet.errors import PayloadTooLarge, ValidationFailed

CHUNK = 1024 * 1024


class CheckpointStore(Protocol):
    """Objects by key, written whole or not at all."""

    async def put(self, key: str, digest: str, chunks: AsyncIterator[bytes], size: int) -> None:
        """Stream an object in; it becomes visible only once exactly ``size`` bytes arrived
        and hashed to ``digest`` (else nothing is left behind and the error says why)."""
        ...

    def has(self, key: str) -> bool:
        """Whether the object is stored (and, for the collector, in use from now on)."""
        ...

    def open(self, key: str) -> Iterator[bytes]:
        """The object's bytes, in chunks (raises FileNotFoundError when it is not stored)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error. (Any method may raise OSError
        or ``StoreUnavailable`` when the storage itself fails.)"""
        ...

    def keys(self, older_than_s: float) -> Iterator[str]:
        """Every stored key last used more than ``older_than_s`` seconds ago."""
        ...


def store_for(url: str | None, directory: Path, *, check: bool = False) -> CheckpointStore:
    """The store ``--checkpoint-store`` names: ``s3://bucket/prefix`` (an S3-compatible
    bucket, see ``gpunet.services.s3_store``), or, when None, ``directory``. ``check``: reach
    the bucket now, so a wrong endpoint, bucket or credential fails at start, naming the
    option."""
    if url is None:
        return FileCheckpointStore(directory)
    from gpunet.services.s3_store import S3CheckpointStore

    store = S3CheckpointStore.from_url(url)
    if check:
        store.check()
    return store


def object_key(account_id: str, digest: str) -> str:
    if not DIGEST.match(digest) or not account_id or "/" in account_id or "." in account_id:
        raise ValidationFailed("digest", "must be sha256:<64 lowercase hex digits>")
    return f"{account_id}/{digest}"


class FileCheckpointStore:
    """Objects as files: ``ROOT/objects/<account>/<sha256 hex>``. An upload streams into a
    temporary file beside them, hashing as it writes, and is renamed into place (atomic on
    one filesystem) only once verified."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        for d in (root, self.objects, self.tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # uploads a crash cut short
        for leftover in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def _path(self, key: str) -> Path:
        account, _, digest = key.partition("/")
        return self.objects / account / digest.removeprefix("sha256:")

    async def put(self, key: str, digest: str, chunks: AsyncIterator[bytes], size: int) -> None:
        h = hashlib.sha256()
        got = 0
        tmp = self.tmp / f"{secrets.token_hex(8)}.part"
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    got += len(chunk)
                    if got > size:
                        raise PayloadTooLarge(
                            f"body: the object was announced as {size} bytes", field="body"
                        )
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())  # durable before it is visible
            if got != size:
                raise ValidationFailed("body", f"got {got} bytes of an object of {size}")
            actual = "sha256:" + h.hexdigest()
            if actual != digest:
                raise ValidationFailed("digest", f"the body hashes to {actual}, not {digest}")
            dest = self._path(key)
            dest.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def has(self, key: str) -> bool:
        p = self._path(key)
        try:
            os.utime(p)  # fresh: the collector spares what a new checkpoint is about to use
        except FileNotFoundError:
            return False
        return True

    def open(self, key: str) -> Iterator[bytes]:
        f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator

        def chunks() -> Iterator[bytes]:
            with f:
                while block := f.read(CHUNK):
                    yield block

        return chunks()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def keys(self, older_than_s: float) -> Iterator[str]:
        cutoff = time.time() - older_than_s
        for account in self.objects.iterdir():
            for p in account.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if p.stat().st_mtime < cutoff:
                        yield f"{account.name}/sha256:{p.name}"
