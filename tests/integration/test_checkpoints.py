"""Checkpoints through the API, on SQLite and PostgreSQL: upload (manifest, objects, commit),
listing, restore via the next attempt's StartItem, torn uploads, keep-N pruning and object
collection, the quota, the object cap and tenancy."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.integration.helpers import Coordinator, Node, auth, coordinator


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [
        {"path": p, "digest": digest(d), "size": len(d), "mode": 0o644} for p, d in files.items()
    ]


class Net:
    """A user, a provider's node running one attempt of a checkpointing job."""

    def __init__(self, co: Coordinator, keep: int = 3) -> None:
        self.co = co
        self.user = co.token("consumer", "alice")
        self.provider = co.token("provider", "owner")
        self.node = co.register(self.provider, name="n1")
        spec = {"name": "ck", "command": ["true"], "checkpoint": {"keep": keep}}
        self.job = co.submit(self.user, spec)
        self.att = co.next_start(self.node)
        assert co.report(self.node, self.att, "started").status_code == 200

    def create(self, files: dict[str, bytes], node: Node | None = None) -> Any:
        return self.co.c.post(
            f"/v1/agent/attempts/{self.att['attempt_id']}/checkpoints",
            json={"fencing_token": self.att["fencing_token"], "files": manifest(files)},
            headers=(node or self.node).headers,
        )

    def put(self, ck: str, data: bytes, dig: str | None = None, token: int | None = None) -> Any:
        return self.co.c.put(
            f"/v1/agent/attempts/{self.att['attempt_id']}/checkpoints/{ck}/objects/"
            f"{dig or digest(data)}",
            params={"fencing_token": self.att["fencing_token"] if token is None else token},
            content=data,
            headers=self.node.headers,
        )

    def commit(self, ck: str) -> Any:
        return self.co.c.post(
            f"/v1/agent/attempts/{self.att['attempt_id']}/checkpoints/{ck}/commit",
            json={"fencing_token": self.att["fencing_token"]},
            headers=self.node.headers,
        )

    def save(self, files: dict[str, bytes]) -> tuple[str, list[str]]:
        """A whole upload; returns the checkpoint id and the digests that were sent."""
        r = self.create(files)
        assert r.status_code == 201, r.text
        ck, missing = r.json()["checkpoint_id"], r.json()["missing"]
        by = {digest(d): d for d in files.values()}
        for m in missing:
            assert self.put(ck, by[m]).status_code == 200
        c = self.commit(ck)
        assert c.status_code == 200, c.text
        return ck, missing

    def listed(self, token: str | None = None) -> Any:
        return self.co.c.get(
            f"/v1/jobs/{self.job['id']}/checkpoints", headers=auth(token or self.user)
        )

    def fetch(self, node: Node, dig: str) -> Any:
        return self.co.c.get(f"/v1/agent/checkpoints/objects/{dig}", headers=node.headers)

    def requeue(self) -> dict[str, Any]:
        """The attempt exits 85 (checkpointed, run me again): the next attempt's start."""
        r = self.co.report(self.node, self.att, "finished", exit_code=85)
        assert r.status_code == 200, r.text
        self.att = self.co.next_start(self.node)
        return self.att


def test_upload_list_and_restore_through_the_next_start(db_url: str, tmp_path: Path) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "ck")) as co:
        n = Net(co)
        files = {"state.json": b'{"step": 7}', "weights/a.bin": b"\x00" * 5000}
        ck, sent = n.save(files)
        assert sorted(sent) == sorted(digest(d) for d in files.values())
        listed = n.listed()
        assert listed.status_code == 200
        [row] = listed.json()
        assert row["id"] == ck and row["files"] == 2 and row["size"] == 5011
        assert row["attempt_id"] == n.att["attempt_id"] and row["completed_at"]

        start = n.requeue()
        ref = start["checkpoint"]
        assert ref["id"] == ck
        assert {f["path"]: f["digest"] for f in ref["files"]} == {
            p: digest(d) for p, d in files.items()
        }
        got = n.fetch(n.node, digest(b'{"step": 7}'))
        assert got.status_code == 200 and got.content == b'{"step": 7}'


def test_second_upload_sends_only_changed_files(db_url: str, tmp_path: Path) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "ck")) as co:
        n = Net(co)
        big = b"x" * 100_000
        n.save({"big.bin": big, "step": b"1"})
        _, sent = n.save({"big.bin": big, "step": b"2"})
        assert sent == [digest(b"2")]
        assert [r["size"] for r in n.listed().json()] == [100_001, 100_001]


def test_torn_uploads_are_never_listed_or_restored(db_url: str, tmp_path: Path) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "ck")) as co:
        n = Net(co)
        # no commit at all
        r = n.create({"a": b"one"})
        assert r.status_code == 201
        # one object of two uploaded: the commit is refused, naming what is missing
        r = n.create({"a": b"one", "b": b"two"})
        ck = r.json()["checkpoint_id"]
        assert n.put(ck, b"one").status_code == 200
        c = n.commit(ck)
        assert c.status_code == 409 and c.json()["error"]["field"] == "missing"
        # an object whose bytes do not hash to its digest is refused and not stored
        bad = n.put(ck, b"tw0", dig=digest(b"two"))
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "digest"
        assert n.commit(ck).status_code == 409
        assert n.listed().json() == []
        start = n.requeue()
        assert start["checkpoint"] is None
        # the node may not read objects of a checkpoint that never completed
        assert n.fetch(n.node, digest(b"one")).status_code == 404


def test_keep_n_prunes_and_collects_unused_objects(db_url: str, tmp_path: Path) -> None:
    store = tmp_path / "ck"
    with coordinator(db_url, checkpoint_dir=str(store), checkpoint_object_grace_s=0) as co:
        n = Net(co, keep=2)

        def stored() -> set[str]:
            return {"sha256:" + p.name for p in (store / "objects").rglob("*") if p.is_file()}

        shared = b"s" * 1000
        ids = [n.save({"shared": shared, "step": str(i).encode()})[0] for i in range(4)]
        assert [r["id"] for r in n.listed().json()] == [ids[3], ids[2]]
        assert stored() == {digest(shared), digest(b"2"), digest(b"3")}


def test_quota_refuses_naming_the_field(db_url: str, tmp_path: Path) -> None:
    with coordinator(
        db_url, checkpoint_dir=str(tmp_path / "ck"), checkpoint_quota_bytes=1000
    ) as co:
        n = Net(co)
        n.save({"a": b"a" * 600})
        r = n.create({"a": b"a" * 600, "b": b"b" * 600})  # the shared object counts once
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["code"] == "quota_exceeded" and err["field"] == "checkpoint_quota"
        n.save({"a": b"a" * 600, "c": b"c" * 300})


def test_object_uploads_are_authenticated_and_capped(db_url: str, tmp_path: Path) -> None:
    with coordinator(
        db_url, checkpoint_dir=str(tmp_path / "ck"), checkpoint_quota_bytes=4096
    ) as co:
        n = Net(co)
        ck = n.create({"a": b"a" * 100}).json()["checkpoint_id"]
        path = f"/v1/agent/attempts/{n.att['attempt_id']}/checkpoints/{ck}/objects/" + digest(
            b"a" * 100
        )
        r = co.c.put(path, params={"fencing_token": n.att["fencing_token"]}, content=b"a" * 100)
        assert r.status_code == 401
        big = co.c.put(
            path,
            params={"fencing_token": n.att["fencing_token"]},
            content=b"a" * 5000,
            headers=n.node.headers,
        )
        assert big.status_code == 413 and big.json()["error"]["field"] == "body"
        # more bytes than the manifest gave for the object
        more = n.put(ck, b"a" * 200, dig=digest(b"a" * 100))
        assert more.status_code == 413
        # a stale fencing token changes nothing
        stale = n.put(ck, b"a" * 100, token=n.att["fencing_token"] + 1)
        assert stale.status_code == 409
        assert n.put(ck, b"a" * 100).status_code == 200
        assert n.commit(ck).status_code == 200


def test_tenancy(db_url: str, tmp_path: Path) -> None:
    with coordinator(db_url, checkpoint_dir=str(tmp_path / "ck")) as co:
        n = Net(co)
        n.save({"secret": b"alice's weights"})
        mallory = co.token("consumer", "mallory")
        r = n.listed(mallory)
        assert r.status_code == 404 and r.json()["error"]["field"] == "job_id"
        other = co.register(n.provider, name="n2")
        assert n.fetch(other, digest(b"alice's weights")).status_code == 404
        assert n.fetch(n.node, digest(b"alice's weights")).status_code == 200
        # another node cannot upload into this attempt
        assert n.create({"x": b"x"}, node=other).status_code == 404
        # nor a node whose attempt ended read it any more
        co.report(n.node, n.att, "finished", exit_code=0)
        assert n.fetch(n.node, digest(b"alice's weights")).status_code == 404
