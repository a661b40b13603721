"""Safe archives: every escape and bomb is refused, at the listing check and at unpacking."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gpunet.agent.runner import unpack
from gpunet.archive import ArchiveTooLarge, Limits, UnsafeArchive, check, extract

Add = Callable[[tarfile.TarFile], None]


def _tar(*adds: Add, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for add in adds:
            add(tar)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> Add:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def _entry(name: str, kind: bytes, link: str = "") -> Add:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        tar.addfile(info)

    return add


def _refused(data: bytes, tmp_path: Path, exc: type[Exception], words: str) -> Path:
    """Both checks refuse; unpacking leaves the destination empty and the outside untouched."""
    with pytest.raises(exc) as info:
        check(data, Limits())
    assert words in str(info.value)
    dest = tmp_path / "box" / "work"
    with pytest.raises(exc):
        unpack(data, dest)
    assert list(dest.iterdir()) == []
    return dest


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    return out


def test_a_plain_archive_unpacks_with_its_links(tmp_path: Path) -> None:
    data = _tar(
        _entry("src", tarfile.DIRTYPE),
        _file("src/main.py", b"print('hi')\n"),
        _entry("src/alias.py", tarfile.SYMTYPE, "main.py"),
        _entry("lib", tarfile.SYMTYPE, "src"),
        _entry("copy.py", tarfile.LNKTYPE, "src/main.py"),
        _entry("up", tarfile.SYMTYPE, "src/../lib/main.py"),
    )
    assert check(data, Limits()).members == 6
    dest = tmp_path / "w"
    summary = extract(data, dest, Limits())
    assert summary.total_bytes == len(b"print('hi')\n")
    assert (dest / "src/alias.py").read_text() == "print('hi')\n"
    assert (dest / "copy.py").read_text() == "print('hi')\n"
    assert (dest / "up").read_text() == "print('hi')\n"


@pytest.mark.parametrize(
    ("adds", "words"),
    [
        ([_file("/etc/evil")], "absolute path"),
        ([_file("../evil")], "'..'"),
        ([_file("a/../../evil")], "'..'"),
        ([_entry("esc", tarfile.SYMTYPE, "../outside"), _file("esc/pwned")], "points outside"),
        ([_entry("esc", tarfile.SYMTYPE, "/tmp")], "points outside"),
        ([_entry("d", tarfile.DIRTYPE), _entry("d/l", tarfile.SYMTYPE, "../..")], "outside"),
        # a later link redirects an earlier one: x/.. was inside until x -> .
        ([_entry("a", tarfile.SYMTYPE, "x/.."), _entry("x", tarfile.SYMTYPE, ".")], "'a'"),
        ([_entry("h", tarfile.LNKTYPE, "../outside/secret")], "hard link"),
        ([_entry("h", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
        ([_entry("h", tarfile.LNKTYPE, "later"), _file("later")], "earlier file"),
        ([_entry("dev", tarfile.CHRTYPE)], "device"),
        ([_entry("blk", tarfile.BLKTYPE)], "device"),
        ([_entry("fifo", tarfile.FIFOTYPE)], "FIFO"),
    ],
)
def test_escapes_and_special_members_are_refused(
    tmp_path: Path, outside: Path, adds: list[Add], words: str
) -> None:
    (outside / "secret").write_text("s")
    _refused(_tar(*adds), tmp_path, UnsafeArchive, words)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_no_member_is_written_through_a_symlink_even_one_inside(tmp_path: Path) -> None:
    data = _tar(_entry("d", tarfile.DIRTYPE), _entry("l", tarfile.SYMTYPE, "d"), _file("l/f"))
    dest = tmp_path / "w"
    with pytest.raises(UnsafeArchive, match="through the symlink 'l'"):
        extract(data, dest, Limits())
    assert list(dest.iterdir()) == []


def _cve_2025_4517(comp_len: int, outside_rel: str) -> bytes:
    """The public PoC of CVE-2025-4517: nested directories with long names and one-letter
    symlinks to them, so that the link chain resolves past PATH_MAX (where ``realpath`` stops
    checking), then a link climbing out through the chain, a link through it to the outside,
    and a hard link and a file written through that."""
    comp = "d" * comp_len
    steps = "abcdefghijklmnop"
    adds: list[Add] = []
    path = ""
    for step in steps:
        adds.append(_entry(os.path.join(path, comp), tarfile.DIRTYPE))
        adds.append(_entry(os.path.join(path, step), tarfile.SYMTYPE, comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    adds.append(_entry(linkpath, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps))))
    adds.append(_entry("escape", tarfile.SYMTYPE, f"{linkpath}/{outside_rel}"))
    adds.append(_entry("flaglink", tarfile.LNKTYPE, "escape/secret"))
    adds.append(_file("escape/pwned", b"owned"))
    return _tar(*adds, gz=False)


@pytest.mark.parametrize("comp_len", [247, 8])
def test_cve_2025_4517_path_max_symlink_chain_is_refused(
    tmp_path: Path, outside: Path, comp_len: int
) -> None:
    """With the PoC's 247-character names (on Python 3.11.7 this archive gets past
    ``extractall(filter="data")``: it writes ``outside/pwned`` and hard-links ``outside/secret``)
    and with short ones, so that the chain itself, not only the name length, is refused."""
    (outside / "secret").write_text("s")
    data = _cve_2025_4517(comp_len, "../../outside")
    words = "over 1024 bytes" if comp_len == 247 else "written through the symlink 'a'"
    _refused(data, tmp_path, UnsafeArchive, words)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").stat().st_nlink == 1


def _bomb(size: int) -> bytes:
    """A gzip bomb: one tar member of ``size`` zero bytes, compressed as hard as gzip can."""
    out = io.BytesIO()
    info = tarfile.TarInfo("zeros")
    info.size = size
    block = bytes(1 << 20)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(info.tobuf())
        for _ in range(size // len(block)):
            gz.write(block)
        gz.write(bytes(size % len(block) + (-size % 512) + 1024))
    return out.getvalue()


def test_gzip_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = _bomb(300 * 1024 * 1024)
    assert len(bomb) < 400_000  # about 300 KB that unpacks to 300 MiB
    small = Limits(max_total_bytes=64 * 1024 * 1024, max_member_bytes=64 * 1024 * 1024)
    with pytest.raises(ArchiveTooLarge, match="limit is 67108864"):
        check(bomb, small)
    dest = tmp_path / "w"
    with pytest.raises(ArchiveTooLarge):
        unpack(bomb, dest, small)
    assert list(dest.iterdir()) == []


def test_member_count_and_total_limits(tmp_path: Path) -> None:
    many = _tar(*(_file(f"f{i}") for i in range(11)))
    with pytest.raises(ArchiveTooLarge, match="more than 10 members"):
        check(many, Limits(max_members=10))
    two = _tar(_file("a", b"x" * 600), _file("b", b"y" * 600))
    with pytest.raises(ArchiveTooLarge, match="more than 1000 bytes"):
        extract(two, tmp_path / "w", Limits(max_total_bytes=1000))
    assert list((tmp_path / "w").iterdir()) == []
    with pytest.raises(UnsafeArchive, match="not a readable tar"):
        check(b"not an archive at all", Limits())
