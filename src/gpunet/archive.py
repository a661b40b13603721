"""Working-directory archives (tar, usually gzipped), checked and unpacked safely.

The coordinator checks an archive's listing when it is uploaded, and the agent checks it again
while unpacking: neither trusts the other. The checks do not rely on ``tarfile``'s ``data``
filter (some Python releases still resolve symlink chains past PATH_MAX, CVE-2025-4517):

- limits on member count, per-member size and total unpacked size, enforced from the headers
  before any member's data is decompressed (a gzip bomb stops at its first big header);
- names must be relative, without ``..``, and not too long;
- a symlink's target is resolved component by component over the archive's own links (no
  filesystem, so no PATH_MAX) and must stay inside; checked when it appears and again once all
  links are known, since a later link can change what an earlier one points to;
- a hard link must name an earlier regular file of the archive;
- devices, FIFOs and other special members are refused;
- no member is written through a symlink: files are written through directory descriptors
  opened with ``O_NOFOLLOW``, one component at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpunet.errors import PayloadTooLarge, ValidationFailed

FIELD = "workdir"
MAX_NAME_BYTES = 1024  # a member's whole path; far below PATH_MAX once under a workdir
MAX_LINK_HOPS = 40  # like the kernel's ELOOP limit


@dataclass(frozen=True)
class Limits:
    max_members: int = 10_000
    max_total_bytes: int = 2 * 1024**3
    max_member_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class Summary:
    members: int
    total_bytes: int


class UnsafeArchive(ValidationFailed):
    """An archive that would write outside its directory, or holds what a workdir must not."""

    def __init__(self, reason: str) -> None:
        super().__init__(FIELD, reason)


class ArchiveTooLarge(PayloadTooLarge):
    """An archive whose unpacked contents exceed a limit (a decompression bomb, say)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{FIELD}: {reason}", field=FIELD)


Parts = tuple[str, ...]


def _parts(name: str) -> Parts:
    """A member name as path components; refuses absolute names, ``..`` and odd bytes."""
    if "\x00" in name:
        raise UnsafeArchive(f"member name {name!r} contains NUL")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UnsafeArchive(f"member name {name[:60]!r}... is over {MAX_NAME_BYTES} bytes")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"member {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"member {name!r} leaves the directory ('..')")
    return parts


def resolve(parts: Parts, links: dict[Parts, str]) -> Parts | None:
    """Where ``parts`` leads inside the tree whose symlinks are ``links`` (path -> target),
    following them like the kernel would; None when it escapes, is absolute or loops."""
    hops = 0
    todo = list(parts)
    out: list[str] = []
    while todo:
        comp = todo.pop(0)
        if comp in ("", "."):
            continue
        if comp == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(comp)
        target = links.get(tuple(out))
        if target is None:
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or target.startswith("/"):
            return None
        out.pop()
        todo = target.split("/") + todo
    return tuple(out)


def _link_target_ok(where: Parts, target: str, links: dict[Parts, str]) -> bool:
    if not target or target.startswith("/") or "\x00" in target:
        return False
    return resolve(where[:-1] + tuple(target.split("/")), links) is not None


class _Checker:
    """Validates members in order; shared by the listing check and the extraction."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.count = 0
        self.total = 0
        self.links: dict[Parts, str] = {}
        self.files: set[Parts] = set()

    def member(self, m: tarfile.TarInfo) -> Parts:
        lim = self.limits
        self.count += 1
        if self.count > lim.max_members:
            raise ArchiveTooLarge(f"more than {lim.max_members} members")
        parts = _parts(m.name)
        if not parts and not m.isdir():
            raise UnsafeArchive(f"member {m.name!r} has an empty name")
        for i in range(1, len(parts)):
            # nothing is written through a symlink (the extraction could not), so the keys of
            # ``links`` are real paths and ``resolve`` sees the tree as the kernel will
            if parts[:i] in self.links:
                via = "/".join(parts[:i])
                raise UnsafeArchive(
                    f"member {m.name!r} would be written through the symlink {via!r}"
                )
        if m.isfile():
            if m.size > lim.max_member_bytes:
                raise ArchiveTooLarge(
                    f"member {m.name!r} is {m.size} bytes; the limit is {lim.max_member_bytes}"
                )
            self.total += m.size
            if self.total > lim.max_total_bytes:
                raise ArchiveTooLarge(
                    f"unpacks to more than {lim.max_total_bytes} bytes (the limit)"
                )
        elif m.issym():
            if not _link_target_ok(parts, m.linkname, self.links):
                raise UnsafeArchive(f"symlink {m.name!r} -> {m.linkname!r} points outside")
        elif m.islnk():
            if _parts_or_none(m.linkname) not in self.files:
                raise UnsafeArchive(
                    f"hard link {m.name!r} -> {m.linkname!r} must name an earlier file"
                )
        elif not m.isdir():
            raise UnsafeArchive(f"member {m.name!r} is a device, FIFO or other special file")
        # the member replaces whatever had its name
        self.links.pop(parts, None)
        self.files.discard(parts)
        if m.issym():
            self.links[parts] = m.linkname
        elif m.isfile() or m.islnk():
            self.files.add(parts)
        return parts

    def finish(self) -> Summary:
        # a later link can redirect an earlier one (a -> x/.., then x -> .): judge them all
        for where, target in self.links.items():
            if not _link_target_ok(where, target, self.links):
                raise UnsafeArchive(f"symlink {'/'.join(where)!r} -> {target!r} points outside")
        return Summary(self.count, self.total)


def _parts_or_none(name: str) -> Parts | None:
    try:
        return _parts(name)
    except UnsafeArchive:
        return None


def _members(data: bytes) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Members one by one in stream mode: data is decompressed only as far as it is read."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for m in tar:
                yield tar, m
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise UnsafeArchive(f"not a readable tar archive: {exc}") from exc


def check(data: bytes, limits: Limits) -> Summary:
    """Check an archive's listing without unpacking it."""
    c = _Checker(limits)
    for _, m in _members(data):
        c.member(m)
    return c.finish()


def _open_dir(root_fd: int, parts: Parts, *, create: bool) -> int:
    """A descriptor of the directory ``parts`` under ``root_fd``, never following a symlink."""
    fd = os.dup(root_fd)
    try:
        for comp in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(comp, 0o755, dir_fd=fd)
            try:
                nxt = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise UnsafeArchive(
                    f"{'/'.join(parts)!r}: {comp!r} is not a plain directory ({exc.strerror})"
                ) from exc
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _remove(dir_fd: int, name: str) -> None:
    """Make room for a member: unlink a file or link; refuse to replace a directory."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeArchive(f"member {name!r} would replace a directory")
    os.unlink(name, dir_fd=dir_fd)


def _copy(
    src: io.BufferedReader | None, fd: int, size: int, on_bytes: Callable[[int], None]
) -> None:
    left = size
    while left > 0 and src is not None:
        buf = src.read(min(left, 1 << 20))
        if not buf:
            break
        os.write(fd, buf)
        left -= len(buf)
        on_bytes(len(buf))


def extract(data: bytes, dest: Path, limits: Limits) -> Summary:
    """Unpack into ``dest`` (created when missing; meant to be empty). On any refusal what was
    written is removed and ``UnsafeArchive``/``ArchiveTooLarge`` is raised."""
    dest.mkdir(parents=True, exist_ok=True)
    root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    written = 0

    def count(n: int) -> None:
        nonlocal written
        written += n
        if written > limits.max_total_bytes:  # headers lied about sizes
            raise ArchiveTooLarge(f"unpacks to more than {limits.max_total_bytes} bytes")

    c = _Checker(limits)
    try:
        for tar, m in _members(data):
            parts = c.member(m)
            if not parts:
                continue
            if m.isdir():
                os.close(_open_dir(root, parts, create=True))
                continue
            parent = _open_dir(root, parts[:-1], create=True)
            name = parts[-1]
            try:
                _remove(parent, name)
                if m.issym():
                    os.symlink(m.linkname, name, dir_fd=parent)
                elif m.islnk():
                    src = _parts(m.linkname)
                    src_dir = _open_dir(root, src[:-1], create=False)
                    try:
                        os.link(
                            src[-1],
                            name,
                            src_dir_fd=src_dir,
                            dst_dir_fd=parent,
                            follow_symlinks=False,
                        )
                    finally:
                        os.close(src_dir)
                else:
                    mode = (m.mode & 0o755) | 0o600  # no setuid/setgid/sticky, owner rw
                    fd = os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        mode,
                        dir_fd=parent,
                    )
                    try:
                        _copy(tar.extractfile(m), fd, m.size, count)  # type: ignore[arg-type]
                    finally:
                        os.close(fd)
            finally:
                os.close(parent)
        return c.finish()
    except BaseException as exc:
        os.close(root)
        root = -1
        _empty(dest)
        if isinstance(exc, OSError):
            raise UnsafeArchive(f"could not unpack: {exc}") from exc
        raise
    finally:
        if root >= 0:
            os.close(root)


def _empty(dest: Path) -> None:
    """Remove what an aborted extraction wrote (symlinks are removed, never followed)."""
    for child in list(dest.iterdir()):
        if child.is_symlink() or not child.is_dir():
            child.unlink(missing_ok=True)
        else:
            shutil.rmtree(child, ignore_errors=True)
