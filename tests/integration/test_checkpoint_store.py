"""The checkpoint store's contract, on the local directory and on an S3-compatible server
(moto's, a real process on 127.0.0.1): put/has/open/delete/keys, uploads that are whole or
leave nothing (torn, wrong digest, wrong size), bounded memory for a large object, two puts
of one key at once."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpunet.errors import PayloadTooLarge, ValidationFailed
from gpunet.services.checkpoint_store import CheckpointStore, FileCheckpointStore, object_key
from tests.s3server import S3Server, s3_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as srv:
        yield srv


def _bucket(srv: S3Server) -> str:
    name = f"ck-{secrets.token_hex(4)}"
    srv.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "file":
        return FileCheckpointStore(tmp_path / "ck")
    from gpunet.services.s3_store import S3CheckpointStore

    srv: S3Server = request.getfixturevalue("s3")
    return S3CheckpointStore(_bucket(srv), "net/ck/", client=srv.client(), part_size=5 * MiB)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _chunks(data: bytes, size: int = 64 * 1024, fail_at: int | None = None) -> Any:
    for i in range(0, len(data), size):
        if fail_at is not None and i >= fail_at:
            raise ConnectionResetError("the agent went away")
        yield data[i : i + size]


def put(store: CheckpointStore, data: bytes, **kw: Any) -> str:
    d = kw.pop("dig", None) or digest(data)
    key = object_key("acct1", digest(data))
    size = kw.pop("size", len(data))
    asyncio.run(store.put(key, d, _chunks(data, **kw), size))
    return key


def read(store: CheckpointStore, key: str) -> bytes:
    return b"".join(store.open(key))


def leftovers(store: CheckpointStore) -> list[str]:
    """Whatever a failed upload could have left: temporary files, open multipart uploads."""
    if isinstance(store, FileCheckpointStore):
        return [p.name for p in store.tmp.iterdir()]
    r = store.s3.list_multipart_uploads(Bucket=store.bucket)  # type: ignore[attr-defined]
    return [u["Key"] for u in r.get("Uploads", [])]


def test_put_has_open_delete(store: CheckpointStore) -> None:
    data = b"step 41\n" * 1000
    key = object_key("acct1", digest(data))
    assert not store.has(key)
    with pytest.raises(FileNotFoundError):
        store.open(key)
    assert put(store, data) == key
    assert store.has(key)
    assert read(store, key) == data
    assert key in set(store.keys(-60))  # every key is older than a minute from now
    store.delete(key)
    store.delete(key)  # a missing one is not an error
    assert not store.has(key)
    assert key not in set(store.keys(-60))


def test_empty_object(store: CheckpointStore) -> None:
    key = put(store, b"")
    assert store.has(key) and read(store, key) == b""


def test_keys_lists_only_objects_unused_for_the_grace(store: CheckpointStore) -> None:
    old, other = put(store, b"old"), put(store, b"other")
    assert set(store.keys(60)) == set()
    time.sleep(2.5)  # S3 times have 1 s resolution
    assert set(store.keys(2)) == {old, other}
    assert store.has(old)  # a manifest found it: in use from now on
    assert set(store.keys(2)) == {other}


def test_a_torn_upload_leaves_nothing(store: CheckpointStore) -> None:
    data = secrets.token_bytes(12 * MiB)  # two full parts sent before the cut
    with pytest.raises(ConnectionResetError):
        put(store, data, fail_at=11 * MiB)
    key = object_key("acct1", digest(data))
    assert not store.has(key)
    assert leftovers(store) == []
    assert list(store.keys(-60)) == []


def test_a_wrong_digest_leaves_nothing(store: CheckpointStore) -> None:
    for data in (b"small", secrets.token_bytes(11 * MiB)):
        with pytest.raises(ValidationFailed) as e:
            put(store, data, dig=digest(b"something else"))
        assert e.value.field == "digest"
        assert not store.has(object_key("acct1", digest(data)))
        assert leftovers(store) == []


def test_a_wrong_size_leaves_nothing(store: CheckpointStore) -> None:
    data = secrets.token_bytes(11 * MiB)
    with pytest.raises(ValidationFailed) as short:
        put(store, data, size=len(data) + 1)
    assert short.value.field == "body"
    with pytest.raises(PayloadTooLarge) as long:
        put(store, data, size=6 * MiB)
    assert long.value.field == "body"
    assert not store.has(object_key("acct1", digest(data)))
    assert leftovers(store) == []


def test_a_large_object_streams_in_parts_with_bounded_memory(store: CheckpointStore) -> None:
    total = 40 * MiB
    block = secrets.token_bytes(MiB)
    h = hashlib.sha256()
    for _ in range(total // MiB):
        h.update(block)
    dig = "sha256:" + h.hexdigest()
    key = object_key("acct1", dig)

    async def body() -> AsyncIterator[bytes]:  # never the whole object at once
        for _ in range(total // MiB):
            for i in range(0, MiB, 256 * 1024):
                yield block[i : i + 256 * 1024]

    tracemalloc.start()
    try:
        asyncio.run(store.put(key, dig, body(), total))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30 * MiB, peak  # a buffered 40 MiB object would peak above 40 MiB
    if not isinstance(store, FileCheckpointStore):
        head = store.s3.head_object(  # type: ignore[attr-defined]
            Bucket=store.bucket,  # type: ignore[attr-defined]
            Key=store._name("objects", key),  # type: ignore[attr-defined]
        )
        assert head["ETag"].strip('"').endswith("-8")  # 8 parts of 5 MiB
    got = hashlib.sha256()
    n = 0
    for chunk in store.open(key):
        got.update(chunk)
        n += len(chunk)
    assert n == total and "sha256:" + got.hexdigest() == dig


def test_two_puts_of_one_key_at_once(store: CheckpointStore) -> None:
    data = secrets.token_bytes(11 * MiB)
    key = object_key("acct1", digest(data))

    async def both() -> None:
        await asyncio.gather(
            store.put(key, digest(data), _chunks(data), len(data)),
            store.put(key, digest(data), _chunks(data, size=100_000), len(data)),
        )

    asyncio.run(both())
    assert read(store, key) == data
    assert leftovers(store) == []
    assert list(store.keys(-60)) == [key]


def test_s3_store_from_the_url_and_standard_environment(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpunet.errors import StoreUnavailable
    from gpunet.services.s3_store import S3CheckpointStore

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = _bucket(s3)
    st = S3CheckpointStore.from_url(f"s3://{bucket}/some/prefix")
    st.check()
    key = put(st, b"hello")
    names = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]  # type: ignore[attr-defined]
    assert names == [f"some/prefix/objects/acct1/{digest(b'hello').removeprefix('sha256:')}"]
    assert read(st, key) == b"hello"

    gone = S3CheckpointStore.from_url("s3://no-such-bucket")
    with pytest.raises(ValidationFailed) as e:
        gone.check()
    assert e.value.field == "checkpoint_store" and "no-such-bucket" in e.value.reason
    for cut_off in (lambda: gone.open(key), lambda: put(gone, b"hello")):
        with pytest.raises(StoreUnavailable) as u:
            cut_off()
        assert u.value.field == "checkpoint_store" and u.value.status_code == 503


def test_s3_collects_a_marker_that_outlived_its_object(s3: S3Server) -> None:
    from gpunet.services.s3_store import S3CheckpointStore

    st = S3CheckpointStore(_bucket(s3), "p/", client=s3.client())
    key = object_key("acct1", digest(b"gone"))
    st.s3.put_object(Bucket=st.bucket, Key=st._name("used", key), Body=b"")  # the race's result
    assert list(st.keys(60)) == []  # fresh: spared like any object
    assert list(st.keys(-60)) == [key]
    st.delete(key)
    assert "Contents" not in st.s3.list_objects_v2(Bucket=st.bucket)


def test_s3_urls() -> None:
    from gpunet.services.s3_store import parse_url

    assert parse_url("s3://b") == ("b", "")
    assert parse_url("s3://b/p/q/") == ("b", "p/q/")
    for bad in ("b/p", "s3:///p", "/var/ck"):
        with pytest.raises(ValidationFailed):
            parse_url(bad)


def test_the_coordinator_keeps_checkpoints_in_the_bucket_it_is_given(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.integration.helpers import coordinator
    from tests.integration.test_checkpoints import Net

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = _bucket(s3)
    with coordinator(
        f"sqlite:///{tmp_path / 'gpunet.db'}", checkpoint_store=f"s3://{bucket}/gpunet"
    ) as co:
        n = Net(co)
        files = {"model.pt": secrets.token_bytes(100_000), "step": b"41"}
        n.save(files)
        start = n.requeue()
        ref = start["checkpoint"]
        assert {f["path"] for f in ref["files"]} == set(files)
        for f in ref["files"]:
            r = n.fetch(n.node, f["digest"])
            assert r.status_code == 200 and r.content == files[f["path"]]
        listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="gpunet/objects/")  # type: ignore[attr-defined]
        assert len(listed["Contents"]) == 2
        local = Path(co.c.app.state.runtime.settings.checkpoint_dir)  # type: ignore[attr-defined]
        assert not (local / "objects").exists()  # nothing went to the directory


def test_server_refuses_an_unusable_store_naming_the_option(s3: S3Server, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUNET_", "AWS_"))}
    env.update(s3.env(), GPUNET_HOME=str(tmp_path / "home"))

    def serve(store: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gpunet", "server", "--port", "1", "--checkpoint-store"]
        return subprocess.run([*cmd, store], env=env, capture_output=True, text=True, timeout=60)

    r = serve("s3://no-such-bucket/p")
    assert r.returncode == 1
    assert "--checkpoint-store" in r.stderr and "no-such-bucket" in r.stderr, r.stderr
    # without boto3: the install hint
    shadow = tmp_path / "shadow"
    (shadow / "boto3").mkdir(parents=True)
    (shadow / "boto3" / "__init__.py").write_text("raise ImportError('no boto3 here')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    r = serve("s3://b/p")
    assert r.returncode == 1
    assert "--checkpoint-store" in r.stderr and "gpunet[s3]" in r.stderr, r.stderr
