"""The checkpoint directory as the agent reads it (hostile: links are never followed, bounds
hold) and the manifest rules the coordinator applies."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gpunet.agent import checkpoints as ac
from gpunet.core.checkpoints import (
    FileEntry,
    ManifestError,
    check_manifest,
    distinct_bytes,
    restored_mode,
    to_prune,
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_scan_takes_regular_files_and_skips_links_and_fifos(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host secret")
    d = tmp_path / "ck"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"alpha")
    (d / "sub" / "b").write_bytes(b"beta")
    os.chmod(d / "sub" / "b", 0o755)
    (d / "link").symlink_to(outside / "secret")
    (d / "dirlink").symlink_to(outside)
    os.mkfifo(d / "fifo")
    found = ac.scan(d)
    assert [(e.path, e.digest, e.size) for e in found.files] == [
        ("a", sha(b"alpha"), 5),
        ("sub/b", sha(b"beta"), 4),
    ]
    assert found.files[1].mode == 0o755
    assert sorted(found.skipped) == ["dirlink", "fifo", "link"]


def test_scan_of_a_directory_that_is_a_link_reads_nothing(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "x").write_bytes(b"x")
    (tmp_path / "ck").symlink_to(real)
    with pytest.raises(ac.CheckpointError, match="cannot open"):
        ac.scan(tmp_path / "ck")
    assert ac.scan(tmp_path / "missing").files == []


def test_scan_bounds_file_count_and_size(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"12345")
    with pytest.raises(ac.CheckpointError, match="more than 4 files"):
        ac.scan(tmp_path, max_files=4)
    with pytest.raises(ac.CheckpointError, match="more than 20 bytes"):
        ac.scan(tmp_path, max_bytes=20)
    assert len(ac.scan(tmp_path, max_files=5, max_bytes=25).files) == 5


def test_scan_rehashes_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big").write_bytes(b"b" * 1000)
    (tmp_path / "step").write_bytes(b"1")
    cache: ac.Cache = {}
    ac.scan(tmp_path, cache)
    hashed: list[int] = []
    real = ac._hash_fd

    def counting(fd: int) -> str:
        hashed.append(fd)
        return real(fd)

    monkeypatch.setattr(ac, "_hash_fd", counting)
    (tmp_path / "step.tmp").write_bytes(b"2")
    os.replace(tmp_path / "step.tmp", tmp_path / "step")
    found = ac.scan(tmp_path, cache)
    assert len(hashed) == 1
    assert {e.path: e.digest for e in found.files}["step"] == sha(b"2")


def test_manifest_rules() -> None:
    ok = FileEntry("a/b", sha(b"x"), 1, 0o644)
    check_manifest([ok, FileEntry("c", sha(b"x"), 1, 0o644)])
    for path, why in [
        ("../x", "parts"),
        ("/etc/passwd", "relative"),
        ("a//b", "parts"),
        ("a/./b", "parts"),
        ("", "empty"),
        ("a\x00b", "NUL"),
    ]:
        with pytest.raises(ManifestError, match=why) as exc:
            check_manifest([FileEntry(path, sha(b"x"), 1, 0o644)])
        assert exc.value.field == "files[0].path"
    with pytest.raises(ManifestError, match="twice"):
        check_manifest([ok, ok])
    with pytest.raises(ManifestError, match="also a directory"):
        check_manifest([ok, FileEntry("a", sha(b"x"), 1, 0o644)])
    with pytest.raises(ManifestError, match="digest"):
        check_manifest([FileEntry("a", "md5:00", 1, 0o644)])
    with pytest.raises(ManifestError, match="at most 1 files"):
        check_manifest([ok, FileEntry("c", sha(b"x"), 1, 0o644)], max_files=1)


def test_modes_pruning_and_distinct_bytes() -> None:
    assert restored_mode(0o4777) == 0o755
    assert restored_mode(0o400) == 0o600
    assert to_prune(["c3", "c2", "c1"], 2) == ["c1"]
    assert to_prune(["c1"], 3) == []
    same = sha(b"s")
    assert distinct_bytes([FileEntry("a", same, 10, 0), FileEntry("b", same, 10, 0)]) == 10


@pytest.mark.parametrize(
    ("reason", "code", "orphaned", "wanted"),
    [
        ("preempted", -15, False, True),  # stopped on purpose: save
        ("cancelled", 143, False, True),
        ("lease lost", -9, False, False),  # the job already runs elsewhere
        (None, 85, False, True),  # checkpointed, run me again
        (None, 0, False, False),
        (None, 1, False, False),
        ("preempted", -15, True, False),  # the coordinator no longer counts the attempt
    ],
)
def test_when_the_final_upload_happens(
    reason: str | None, code: int, orphaned: bool, wanted: bool
) -> None:
    assert ac.final_wanted(reason, code, orphaned) is wanted
