"""The agent's checkpoint sync against a real coordinator app, on SQLite and PostgreSQL:
incremental uploads, a file changed after it was hashed, restore and a tampered restore."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpunet.agent import checkpoints as ac
from gpunet.wire.agent import CheckpointRef
from tests.integration.helpers import Coordinator, Node, auth, coordinator


def _setup(co: Coordinator) -> tuple[str, Node, dict[str, Any]]:
    user = co.token("consumer", "alice")
    node = co.register(co.token("provider", "owner"))
    job = co.submit(user, {"name": "ck", "command": ["true"]})
    att = co.next_start(node)
    return user, node, {**att, "job": job}


def _sync(co: Coordinator, node: Node, att: dict[str, Any], d: Path, notes: list[str]) -> ac.Sync:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=co.c.app))
    return ac.Sync(
        http=http,
        url="http://coordinator",
        headers=lambda: node.headers,
        attempt_id=att["attempt_id"],
        fencing_token=att["fencing_token"],
        directory=d,
        note=notes.append,
    )


def test_upload_is_incremental_and_restores_whole(db_url: str, tmp_path: Path) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "store")) as co:
        user, node, att = _setup(co)
        d = tmp_path / "ck"
        (d / "w").mkdir(parents=True)
        (d / "w" / "weights.bin").write_bytes(os.urandom(300_000))
        (d / "step").write_bytes(b"1")
        os.chmod(d / "step", 0o700)
        notes: list[str] = []

        async def run() -> None:
            s = _sync(co, node, att, d, notes)
            first = await s.upload()
            (d / "step").write_bytes(b"2")
            second = await s.upload()
            assert first and second and second.files == 2
            await s.http.aclose()

        asyncio.run(run())
        assert "(2 objects, 300001 bytes uploaded)" in notes[0]
        assert "(1 objects, 1 bytes uploaded)" in notes[1]
        listed = co.c.get(f"/v1/jobs/{att['job']['id']}/checkpoints", headers=auth(user)).json()
        assert len(listed) == 2

        start = co.work(node)["start"][0]  # the same assigned attempt, with its checkpoint now
        ref = CheckpointRef.model_validate(start["checkpoint"])
        out = tmp_path / "restored" / ac.directory_of(tmp_path).name

        async def restore() -> None:
            s = _sync(co, node, att, out, notes)
            await s.restore(ref)
            await s.http.aclose()

        asyncio.run(restore())
        assert (out / "step").read_bytes() == b"2"
        assert (out / "w" / "weights.bin").read_bytes() == (d / "w" / "weights.bin").read_bytes()
        assert (out / "step").stat().st_mode & 0o777 == 0o700

        # a manifest the coordinator never stored (another digest): nothing half-restored
        bad = ref.model_copy(
            update={"files": [ref.files[0].model_copy(update={"digest": "sha256:" + "0" * 64})]}
        )
        (out / "step").write_bytes(b"kept")

        async def tampered() -> None:
            s = _sync(co, node, att, out, notes)
            with pytest.raises(ac.CheckpointError):
                await s.restore(bad)
            await s.http.aclose()

        asyncio.run(tampered())
        assert (out / "step").read_bytes() == b"kept"
        assert not out.with_name(out.name + ".restore").exists()


def test_a_file_changed_after_hashing_is_never_part_of_a_checkpoint(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "store")) as co:
        user, node, att = _setup(co)
        d = tmp_path / "ck"
        d.mkdir()
        (d / "state").write_bytes(b"step 1")
        real = ac.open_inside

        def job_writes_meanwhile(root: Path, rel: str) -> int:
            (root / rel).write_bytes(b"step 2")  # same size, other bytes
            return real(root, rel)

        monkeypatch.setattr(ac, "open_inside", job_writes_meanwhile)
        notes: list[str] = []

        async def run() -> None:
            s = _sync(co, node, att, d, notes)
            with pytest.raises(ac.CheckpointError, match="refused"):
                await s.upload()
            await s.http.aclose()

        asyncio.run(run())
        listed = co.c.get(f"/v1/jobs/{att['job']['id']}/checkpoints", headers=auth(user)).json()
        assert listed == []


def test_a_file_replaced_by_rename_after_hashing_is_sent_as_hashed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "store")) as co:
        user, node, att = _setup(co)
        d = tmp_path / "w" / "ck"
        d.mkdir(parents=True)
        (d / "count").write_bytes(b"41")
        real = ac.open_inside

        def job_renames_meanwhile(root: Path, rel: str) -> int:
            (d / "count.tmp").write_bytes(b"42")
            os.replace(d / "count.tmp", d / "count")  # the job's next step, done right
            return real(root, rel)

        monkeypatch.setattr(ac, "open_inside", job_renames_meanwhile)
        notes: list[str] = []

        async def run() -> None:
            s = _sync(co, node, att, d, notes)
            done = await s.upload()
            assert done is not None and done.size == 2
            assert not s.snapshots.exists()
            await s.http.aclose()

        asyncio.run(run())
        start = co.work(node)["start"][0]
        [f] = start["checkpoint"]["files"]
        assert f["digest"] == "sha256:" + hashlib.sha256(b"41").hexdigest()
        got = co.c.get(f"/v1/agent/checkpoints/objects/{f['digest']}", headers=node.headers)
        assert got.content == b"41"
