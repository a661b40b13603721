"""An attempt's checkpoint directory: restored before the job starts, uploaded while it runs
(``checkpoint.interval_s``) and once more when it is stopped or exits 85.

The directory belongs to a stranger's job, so it is read as hostile: it is walked through
file descriptors with ``O_NOFOLLOW`` (a symlink, or a directory swapped for one, is skipped,
never followed), only regular files are taken, and file count and total size are bounded.
Each file is hashed for the manifest; an object is then streamed once more while the store
hashes it, so a file the job changed in between is refused by the store and never becomes
part of a complete checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpunet.core.checkpoints import (
    MAX_FILES,
    SUBDIR,
    FileEntry,
    ManifestError,
    check_manifest,
    check_path,
    restored_mode,
)
from gpunet.core.jobs import REQUEUE_EXIT_CODE
from gpunet.wire.agent import (
    CheckpointCommitted,
    CheckpointCreated,
    CheckpointFile,
    CheckpointManifest,
    CheckpointRef,
    Report,
)

log = logging.getLogger("gpunet.agent.checkpoints")

CHUNK = 1024 * 1024
MAX_DEPTH = 64
MAX_BYTES = 1024**4  # a checkpoint directory above 1 TiB is not uploaded
TRIES = 4
LEASE_LOST = "lease lost"  # the agent's stop reason when its lease lapsed
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class CheckpointError(Exception):
    """A checkpoint could not be uploaded or restored; the message says why."""


@dataclass
class Scan:
    """What a walk of the directory found."""

    files: list[FileEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not regular files: symlinks, FIFOs...
    total: int = 0
    # path -> a hard link to the very inode that was hashed, in a directory of the agent's own:
    # a job that replaces the file (write, then rename) after the walk does not change what is
    # sent; one that writes in place makes the store refuse the object
    snapshot: dict[str, Path] = field(default_factory=dict)


# path -> ((size, mtime_ns, inode), digest): unchanged files are not hashed again
Cache = dict[str, tuple[tuple[int, int, int], str]]


def _hash_fd(fd: int) -> str:
    h = hashlib.sha256()
    while block := os.read(fd, CHUNK):
        h.update(block)
    return "sha256:" + h.hexdigest()


def scan(
    root: Path,
    cache: Cache | None = None,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
    snapshot: Path | None = None,
) -> Scan:
    """The regular files under ``root`` with their digests, sizes and modes. Symlinks and
    anything else that is not a regular file or directory are skipped (and named); more than
    ``max_files`` files or ``max_bytes`` bytes raise CheckpointError. With ``snapshot`` (an
    empty directory of the agent's own on the same filesystem) each file is hard-linked there
    first and hashed through the link (``Scan.snapshot``)."""
    out = Scan()
    walk = _Walk(out, {} if cache is None else cache, max_files, max_bytes, snapshot)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise CheckpointError(f"cannot open the checkpoint directory: {exc.strerror}") from None
    try:
        _walk(fd, "", 0, walk)
    finally:
        os.close(fd)
    out.files.sort(key=lambda e: e.path)
    return out


@dataclass
class _Walk:
    out: Scan
    cache: Cache
    max_files: int
    max_bytes: int
    snapshot: Path | None


def _walk(dir_fd: int, prefix: str, depth: int, w: _Walk) -> None:
    out, cache, max_files, max_bytes = w.out, w.cache, w.max_files, w.max_bytes
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{prefix or '.'}: directories nested deeper than {MAX_DEPTH}")
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        rel = f"{prefix}{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we looked
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                out.skipped.append(rel + "/")  # swapped for a link, or gone
                continue
            try:
                _walk(sub, rel + "/", depth + 1, w)
            finally:
                os.close(sub)
            continue
        if not stat.S_ISREG(st.st_mode) or check_path(rel) is not None:
            out.skipped.append(rel)
            continue
        link = _link(w.snapshot, dir_fd, name, len(out.files) + len(out.skipped))
        try:
            if link is not None:
                fd = os.open(link, _FILE_FLAGS)
                out.snapshot[rel] = link
            else:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                out.skipped.append(rel)
                continue
            raise CheckpointError(f"{rel}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                out.skipped.append(rel)
                continue
            if len(out.files) >= max_files:
                raise CheckpointError(f"more than {max_files} files in the checkpoint directory")
            out.total += st.st_size
            if out.total > max_bytes:
                raise CheckpointError(f"the checkpoint directory holds more than {max_bytes} bytes")
            # not ctime: the snapshot's link changes it
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            hit = cache.get(rel)
            digest = hit[1] if hit and hit[0] == sig else _hash_fd(fd)
            cache[rel] = (sig, digest)
            out.files.append(FileEntry(rel, digest, st.st_size, stat.S_IMODE(st.st_mode)))
        finally:
            os.close(fd)


def _link(snapshot: Path | None, dir_fd: int, name: str, n: int) -> Path | None:
    """A hard link to ``name`` (the entry itself, never a link's target) in the snapshot
    directory, or None without one or when the filesystem refuses."""
    if snapshot is None:
        return None
    dest = snapshot / str(n)
    try:
        os.link(name, dest, src_dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return dest


def open_inside(root: Path, rel: str) -> int:
    """A read descriptor of ``rel`` under ``root``, no link followed on the way."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        *dirs, name = rel.split("/")
        for d in dirs:
            nxt = os.open(d, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        out = os.open(name, _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise CheckpointError(f"{rel}: no longer a regular file")
    return out


async def _file_chunks(fd: int) -> AsyncIterator[bytes]:
    try:
        while block := await asyncio.to_thread(os.read, fd, CHUNK):
            yield block
    finally:
        os.close(fd)


@dataclass
class Sync:
    """Checkpoints of one attempt: ``directory`` on this host, uploaded with the attempt's
    fencing token through the agent's connection."""

    http: httpx.AsyncClient
    url: str
    headers: Callable[[], dict[str, str]]
    attempt_id: str
    fencing_token: int
    directory: Path
    note: Callable[[str], None]  # a line for the attempt's log
    cache: Cache = field(default_factory=dict)
    periodic: asyncio.Task[None] | None = None

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One call, retried while the coordinator is away; a 4xx raises CheckpointError."""
        delay = 0.5
        for attempt in range(TRIES):
            try:
                r = await self.http.request(method, self.url + path, headers=self.headers(), **kw)
            except httpx.TransportError as exc:
                if attempt == TRIES - 1:
                    raise CheckpointError(f"coordinator unreachable: {exc}") from None
            else:
                if r.status_code < 500:
                    if r.status_code >= 400:
                        raise CheckpointError(_message(r))
                    return r
                if attempt == TRIES - 1:
                    raise CheckpointError(_message(r))
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    # ---- upload ------------------------------------------------------------------------
    @property
    def snapshots(self) -> Path:
        """The agent's own directory beside the attempt's working directory (same filesystem,
        out of the job's sight) that holds the links of one upload."""
        workdir = self.directory.parent
        return workdir.with_name(workdir.name + ".ckpt-upload")

    async def upload(self) -> CheckpointCommitted | None:
        """Upload the directory as one checkpoint (None when it holds no file)."""
        snap = self.snapshots
        await asyncio.to_thread(shutil.rmtree, snap, True)
        snap.mkdir(mode=0o700)
        try:
            return await self._upload(snap)
        finally:
            await asyncio.to_thread(shutil.rmtree, snap, True)

    async def _upload(self, snap: Path) -> CheckpointCommitted | None:
        found = await asyncio.to_thread(scan, self.directory, self.cache, snapshot=snap)
        if found.skipped:
            self.note(
                f"checkpoint: skipped {len(found.skipped)} entries that are not regular files "
                f"(e.g. {found.skipped[0]})"
            )
        if not found.files:
            return None
        try:
            check_manifest(found.files)
        except ManifestError as exc:
            raise CheckpointError(str(exc)) from None
        base = f"/v1/agent/attempts/{self.attempt_id}/checkpoints"
        man = CheckpointManifest(
            fencing_token=self.fencing_token,
            files=[
                CheckpointFile(path=e.path, digest=e.digest, size=e.size, mode=e.mode)
                for e in found.files
            ],
        )
        r = await self._request("POST", base, json=man.model_dump(mode="json"))
        created = CheckpointCreated.model_validate(r.json())
        by_digest = {e.digest: e for e in found.files}
        sent = 0
        for digest in created.missing:
            e = by_digest.get(digest)
            if e is None:
                raise CheckpointError(f"the coordinator asked for an unknown object {digest}")
            await self._put(created.checkpoint_id, e, found.snapshot.get(e.path))
            sent += e.size
        r = await self._request(
            "POST",
            f"{base}/{created.checkpoint_id}/commit",
            json=Report(fencing_token=self.fencing_token).model_dump(mode="json"),
        )
        done = CheckpointCommitted.model_validate(r.json())
        self.note(
            f"checkpoint {done.checkpoint_id} saved: {done.files} files, {done.size} bytes "
            f"({len(created.missing)} objects, {sent} bytes uploaded)"
        )
        return done

    async def _put(self, checkpoint_id: str, e: FileEntry, link: Path | None = None) -> None:
        path = (
            f"/v1/agent/attempts/{self.attempt_id}/checkpoints/{checkpoint_id}/objects/{e.digest}"
        )
        for attempt in range(TRIES):
            try:
                fd = await asyncio.to_thread(
                    open_inside, *((link.parent, link.name) if link else (self.directory, e.path))
                )
            except OSError as exc:
                raise CheckpointError(f"{e.path}: {exc.strerror}") from None
            try:
                r = await self.http.put(
                    self.url + path,
                    params={"fencing_token": self.fencing_token},
                    headers={
                        **self.headers(),
                        "Content-Length": str(e.size),
                        "Content-Type": "application/octet-stream",
                    },
                    content=_file_chunks(fd),
                    timeout=httpx.Timeout(60.0),
                )
            except httpx.TransportError as exc:
                if attempt == TRIES - 1:
                    raise CheckpointError(f"upload of {e.path} failed: {exc}") from None
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            if r.status_code < 400:
                return
            if r.status_code < 500 or attempt == TRIES - 1:
                # e.g. the job changed the file after it was hashed: the next upload takes it
                raise CheckpointError(f"upload of {e.path} refused: {_message(r)}")
            await asyncio.sleep(0.5 * 2**attempt)

    async def _upload_logged(self) -> None:
        try:
            await self.upload()
        except CheckpointError as exc:
            self.note(f"checkpoint upload failed: {exc}")
        except Exception as exc:  # an upload must never take the attempt down with it
            log.exception("checkpoint upload of %s failed", self.attempt_id)
            self.note(f"checkpoint upload failed: {exc}")

    def start_periodic(self, interval_s: float | None) -> None:
        """Upload every ``interval_s`` seconds while the attempt runs."""
        if interval_s:
            self.periodic = asyncio.create_task(self._every(interval_s))

    async def _every(self, interval_s: float) -> None:
        # a fixed cadence: an upload's own duration does not stretch the interval
        loop = asyncio.get_running_loop()
        due = loop.time() + interval_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._upload_logged()
            due = max(due + interval_s, loop.time())

    async def stop_periodic(self) -> None:
        if self.periodic is not None:
            self.periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.periodic
            self.periodic = None

    async def final(self) -> None:
        """The last upload, once the job's processes are gone: nothing writes any more."""
        await self.stop_periodic()
        await self._upload_logged()

    # ---- restore -----------------------------------------------------------------------
    async def restore(self, ref: CheckpointRef | None) -> None:
        """Make the (empty, or restored) checkpoint directory before the job starts. A
        checkpoint that cannot be restored whole raises CheckpointError: the job must not
        silently start over from nothing."""
        try:
            await self._restore(ref)
        except OSError as exc:  # e.g. this node's disk is full: another node may do better
            raise CheckpointError(f"{exc.strerror or exc}") from None

    async def _restore(self, ref: CheckpointRef | None) -> None:
        staging = self.directory.with_name(self.directory.name + ".restore")
        await asyncio.to_thread(shutil.rmtree, staging, True)
        if ref is None or not ref.files:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        entries = [FileEntry(f.path, f.digest, f.size, f.mode) for f in ref.files]
        try:
            check_manifest(entries)
        except ManifestError as exc:
            raise CheckpointError(f"the checkpoint's manifest is unsafe: {exc}") from None
        staging.mkdir(mode=0o700, parents=True)
        try:
            fetched: dict[str, Path] = {}
            for e in entries:
                dest = staging.joinpath(*e.path.split("/"))
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                if e.digest in fetched:
                    await asyncio.to_thread(shutil.copyfile, fetched[e.digest], dest)
                else:
                    await self._fetch(e, dest)
                    fetched[e.digest] = dest
                os.chmod(dest, restored_mode(e.mode))
            await asyncio.to_thread(shutil.rmtree, self.directory, True)
            os.replace(staging, self.directory)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        total = sum(e.size for e in entries)
        self.note(f"checkpoint {ref.id} restored: {len(entries)} files, {total} bytes")

    async def _fetch(self, e: FileEntry, dest: Path) -> None:
        url = f"{self.url}/v1/agent/checkpoints/objects/{e.digest}"
        for attempt in range(TRIES):
            h = hashlib.sha256()
            got = 0
            try:
                async with self.http.stream(
                    "GET", url, headers=self.headers(), timeout=httpx.Timeout(60.0)
                ) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        if r.status_code < 500 or attempt == TRIES - 1:
                            raise CheckpointError(f"{e.path}: {_message(r)}")
                        await asyncio.sleep(0.5 * 2**attempt)
                        continue
                    with open(dest, "wb") as f:
                        async for block in r.aiter_bytes(CHUNK):
                            got += len(block)
                            if got > e.size:
                                raise CheckpointError(f"{e.path}: more bytes than its {e.size}")
                            h.update(block)
                            f.write(block)
            except httpx.TransportError as exc:
                if attempt == TRIES - 1:
                    raise CheckpointError(f"{e.path}: download failed: {exc}") from None
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            actual = "sha256:" + h.hexdigest()
            if got != e.size or actual != e.digest:
                raise CheckpointError(f"{e.path}: the download does not match its digest")
            return


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {r.status_code}"


def directory_of(workdir: Path) -> Path:
    """The attempt's checkpoint directory on this host (inside its working directory, which
    the job sees as its HOME)."""
    return workdir / SUBDIR


def interval_of(spec: dict[str, Any]) -> float | None:
    """The spec's ``checkpoint.interval_s`` (None: upload only when stopped)."""
    ck = spec.get("checkpoint") or {}
    v = ck.get("interval_s") if isinstance(ck, dict) else None
    return float(v) if isinstance(v, int | float) and v > 0 else None


def final_wanted(stop_reason: str | None, exit_code: int, orphaned: bool) -> bool:
    """Whether an ended attempt uploads its directory once more: it was stopped on purpose
    (not on a lapsed lease: the job already runs elsewhere) or asked to be run again."""
    if orphaned:
        return False
    if exit_code == REQUEUE_EXIT_CODE:
        return True
    return stop_reason is not None and stop_reason != LEASE_LOST
