"""Checkpoint objects in an S3-compatible bucket (``--checkpoint-store s3://bucket/prefix``).

Layout under the prefix: ``objects/<account>/<sha256 hex>`` holds an object's bytes and
``used/<account>/<sha256 hex>`` is an empty marker rewritten each time a manifest finds the
object stored. An object's "last used" time is the later of the two ``LastModified``: S3
cannot touch an object in place (a copy onto itself rewrites every byte), and the collector
must spare what a new checkpoint is about to use, as the local store's mtime does.

boto3 is an optional extra (``pip install 'gpunet[s3]'``), imported only when this store is
chosen. Endpoint, region and credentials come from boto3's standard sources
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``~/.aws``, instance roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from gpunet.errors import PayloadTooLarge, StoreUnavailable, ValidationFailed

CHUNK = 1024 * 1024
PART = 8 * 1024 * 1024  # S3's smallest part is 5 MiB (but the last); at most 10,000 parts
INSTALL_HINT = "pip install 'gpunet[s3]'"


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, ``some/prefix/``); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise ValidationFailed("checkpoint_store", f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValidationFailed("checkpoint_store", f"{url!r} names no bucket")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ValidationFailed(
            "checkpoint_store",
            f"--checkpoint-store s3://... needs boto3, not installed here: {INSTALL_HINT}",
        ) from None
    # more connections than botocore's 10: parts, restores and manifests run in threads
    cfg = Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 5})
    return boto3.client("s3", config=cfg)


def _errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _not_found(exc: Exception) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NotFound")


class S3CheckpointStore:
    """The ``CheckpointStore`` protocol over S3's API. Uploads stream as a multipart upload
    (parts of ``part_size``, one part in flight while the next fills), hashing as they go;
    the upload is completed only when size and sha256 match, else aborted, so an object is
    visible whole or not at all. An object no larger than one part is checked first and sent
    with one ``PutObject``. Transport failures raise ``StoreUnavailable`` (503)."""

    def __init__(
        self, bucket: str, prefix: str = "", *, client: Any = None, part_size: int = PART
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 parts are at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.s3 = client if client is not None else _client()
        self._errors = _errors()

    @classmethod
    def from_url(cls, url: str) -> S3CheckpointStore:
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix)

    def check(self) -> None:
        """Fail now, naming the option, when the bucket cannot be reached or used."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            raise ValidationFailed(
                "checkpoint_store",
                f"--checkpoint-store: bucket {self.bucket!r} is not usable ({exc}); check "
                "AWS_ENDPOINT_URL, the AWS credentials and that the bucket exists",
            ) from None

    # keys: "<account>/sha256:<hex>" <-> "<prefix>objects/<account>/<hex>"
    def _name(self, kind: str, key: str) -> str:
        account, _, digest = key.partition("/")
        return f"{self.prefix}{kind}/{account}/{digest.removeprefix('sha256:')}"

    def _unavailable(self, what: str, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(
            f"checkpoint_store: {what} failed in bucket {self.bucket!r}: {exc}",
            field="checkpoint_store",
        )

    async def put(self, key: str, digest: str, chunks: AsyncIterator[bytes], size: int) -> None:
        name = self._name("objects", key)
        h = hashlib.sha256()
        got = 0
        buf: list[bytes] = []
        filled = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        sent = 0
        in_flight: asyncio.Task[None] | None = None

        async def send(number: int, body: bytes) -> None:
            assert upload_id is not None
            r = await asyncio.to_thread(
                self.s3.upload_part,
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
            parts.append({"PartNumber": number, "ETag": r["ETag"]})

        async def flush() -> None:
            nonlocal buf, filled, upload_id, in_flight, sent
            body = b"".join(buf)
            buf, filled = [], 0
            if upload_id is None:
                r = await asyncio.to_thread(
                    self.s3.create_multipart_upload, Bucket=self.bucket, Key=name
                )
                upload_id = r["UploadId"]
            if in_flight is not None:  # at most one part on the wire, one filling
                await in_flight
            sent += 1
            in_flight = asyncio.create_task(send(sent, body))

        try:
            async for chunk in chunks:
                got += len(chunk)
                if got > size:
                    raise PayloadTooLarge(
                        f"body: the object was announced as {size} bytes", field="body"
                    )
                h.update(chunk)
                buf.append(chunk)
                filled += len(chunk)
                # a part is sent once full, except the last, which completes the object
                if size > self.part_size and filled >= self.part_size and got < size:
                    await flush()
            if got != size:
                raise ValidationFailed("body", f"got {got} bytes of an object of {size}")
            actual = "sha256:" + h.hexdigest()
            if actual != digest:
                raise ValidationFailed("digest", f"the body hashes to {actual}, not {digest}")
            if upload_id is None:  # one part's worth, verified whole: one request
                body = b"".join(buf)
                buf = []
                await asyncio.to_thread(self.s3.put_object, Bucket=self.bucket, Key=name, Body=body)
                return
            await flush()
            assert in_flight is not None
            await in_flight
            in_flight = None
            done = sorted(parts, key=lambda p: int(p["PartNumber"]))
            await asyncio.to_thread(
                self.s3.complete_multipart_upload,
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
            upload_id = None
        except self._errors as exc:
            raise self._unavailable("an upload", exc) from None
        finally:
            if upload_id is not None:  # cut short or refused: leave nothing behind
                await asyncio.shield(self._abort(name, upload_id, in_flight))

    async def _abort(self, name: str, upload_id: str, in_flight: asyncio.Task[None] | None) -> None:
        if in_flight is not None:  # a part still being sent would outlive the abort
            with contextlib.suppress(Exception):
                await in_flight
        with contextlib.suppress(*self._errors):
            await asyncio.to_thread(
                self.s3.abort_multipart_upload, Bucket=self.bucket, Key=name, UploadId=upload_id
            )

    def has(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._name("objects", key))
        except self._errors as exc:
            if _not_found(exc):
                return False
            raise self._unavailable("a lookup", exc) from None
        try:  # fresh: the collector spares what a new checkpoint is about to use
            self.s3.put_object(Bucket=self.bucket, Key=self._name("used", key), Body=b"")
        except self._errors as exc:
            raise self._unavailable("marking an object used", exc) from None
        return True

    def open(self, key: str) -> Iterator[bytes]:
        try:
            r = self.s3.get_object(Bucket=self.bucket, Key=self._name("objects", key))
        except self._errors as exc:
            if _not_found(exc):
                raise FileNotFoundError(key) from None
            raise self._unavailable("a download", exc) from None
        body = r["Body"]

        def chunks() -> Iterator[bytes]:
            with contextlib.closing(body):
                yield from body.iter_chunks(CHUNK)

        return chunks()

    def delete(self, key: str) -> None:
        try:  # missing keys are not errors to S3 either
            self.s3.delete_objects(
                Bucket=self.bucket,
                Delete={
                    "Objects": [{"Key": self._name(k, key)} for k in ("objects", "used")],
                    "Quiet": True,
                },
            )
        except self._errors as exc:
            raise self._unavailable("a delete", exc) from None

    def _listing(self, kind: str) -> Iterator[tuple[str, datetime]]:
        """(key, LastModified) of every name under ``<prefix><kind>/``."""
        base = f"{self.prefix}{kind}/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        try:
            for page in pages:
                for o in page.get("Contents", []):
                    account, _, hexdigest = o["Key"].removeprefix(base).partition("/")
                    if account and hexdigest and "/" not in hexdigest:
                        yield f"{account}/sha256:{hexdigest}", o["LastModified"]
        except self._errors as exc:
            raise self._unavailable("a listing", exc) from None

    def keys(self, older_than_s: float) -> Iterator[str]:
        # LastModified is the server's clock: skew against ours shortens or lengthens the
        # grace by as much (seconds, against a grace of minutes)
        cutoff = time.time() - older_than_s
        used = {k: t.timestamp() for k, t in self._listing("used")}
        for k, t in self._listing("objects"):
            if max(t.timestamp(), used.pop(k, 0.0)) < cutoff:
                yield k
        # a marker rewritten just as its object was deleted outlives it: offered too, so the
        # collector's delete removes it
        yield from (k for k, t in used.items() if t < cutoff)
