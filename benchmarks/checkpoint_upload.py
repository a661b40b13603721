"""Checkpoint upload benchmark: a real coordinator (``gpunet server``, SQLite in a temporary
directory) on 127.0.0.1, and the agent's checkpoint sync in this process.

A node is registered and given an attempt of a job; a directory of ``--files`` random files
totalling ``--size-mib`` is then uploaded as one checkpoint, exactly as the agent does it
(walk and hash, manifest, every missing object streamed, commit). Measured per run:

* the full upload's wall time and throughput (hashing included: the agent hashes every file
  of a first upload), and the time of the object transfers alone (PUTs);
* the coordinator's resident memory: before the upload, and its peak while the objects stream
  (sampled from /proc every 20 ms), so the figure shows it never holds an object in memory;
* an incremental upload after one file changed (only that file is sent);
* a restore of the checkpoint into another directory (every object streamed and verified).

    python benchmarks/checkpoint_upload.py --size-mib 1024 --files 4 --runs 3 --json

``--store s3`` puts the coordinator on ``--checkpoint-store s3://bench/ck`` against moto's S3
server on 127.0.0.1 (``pip install -e '.[dev]'``). moto is an emulator: the figures measure
gpunet's streaming path to an S3 API (multipart parts, hashing, the proxy on restore), not
the throughput of any real S3 service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.agent import checkpoints as ac
from gpunet.wire.agent import CheckpointRef
from tests.e2e.procs import free_port  # noqa: E402

MiB = 1024 * 1024


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler:
    """The peak of a process's resident memory while it runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def write_files(d: Path, files: int, size_mib: int) -> None:
    d.mkdir(parents=True)
    per = size_mib // files
    for i in range(files):
        with open(d / f"shard-{i}.bin", "wb") as f:
            for _ in range(per):
                f.write(os.urandom(MiB))


@contextmanager
def s3_bucket(root: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """moto's S3 server with a bucket: the server's extra flags and environment."""
    from tests.s3server import s3_server

    with s3_server(root / "moto.log") as srv:
        srv.client().create_bucket(Bucket="bench")  # type: ignore[attr-defined]
        yield ["--checkpoint-store", "s3://bench/ck"], srv.env()


def start_server(
    root: Path, flags: list[str], more_env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env.update(more_env, GPUNET_HOME=str(root / "home"))
    p = subprocess.Popen(
        [sys.executable, "-m", "gpunet", "server", "--port", str(port), *flags],
        env=env,
        stdout=open(root / "server.log", "wb"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            p.kill()
            raise SystemExit("the coordinator did not start; see server.log")
        time.sleep(0.2)
    admin = (root / "home" / "admin-token").read_text().strip()
    return p, url, admin


def attempt(url: str, admin: str) -> tuple[str, dict[str, Any]]:
    """A node's token and an attempt assigned to it."""

    def token(role: str, account: str) -> str:
        r = httpx.post(
            url + "/v1/tokens",
            json={"role": role, "account": account},
            headers={"Authorization": f"Bearer {admin}"},
        )
        r.raise_for_status()
        return str(r.json()["token"])

    provider, user = token("provider", "owner"), token("consumer", "bench")
    gpu = {"index": 0, "uuid": "GPU-b", "name": "A100", "model": "A100-80GB", "memory_mb": 80000}
    r = httpx.post(
        url + "/v1/agent/register",
        json={"name": "bench", "gpus": [gpu | {"simulated": True}], "accepts_unisolated": True},
        headers={"Authorization": f"Bearer {provider}"},
    )
    r.raise_for_status()
    node = str(r.json()["token"])
    httpx.post(
        url + "/v1/jobs",
        json={"name": "ck", "command": ["true"], "checkpoint": {"keep": 1}},
        headers={"Authorization": f"Bearer {user}"},
    ).raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        w = httpx.get(
            url + "/v1/agent/work",
            params={"wait": 5},
            headers={"Authorization": f"Bearer {node}"},
            timeout=10,
        ).json()
        if w["start"]:
            return node, dict(w["start"][0])
    raise SystemExit("no attempt was assigned")


async def one_run(url: str, node: str, att: dict[str, Any], d: Path, pid: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {node}"}
    notes: list[str] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:

        async def heartbeat() -> None:  # the node keeps its lease, as an agent does
            while True:
                await http.post(url + "/v1/agent/heartbeat", json={}, headers=headers)
                await asyncio.sleep(5)

        beat = asyncio.create_task(heartbeat())
        sync = ac.Sync(
            http=http,
            url=url,
            headers=lambda: headers,
            attempt_id=att["attempt_id"],
            fencing_token=att["fencing_token"],
            directory=d,
            note=notes.append,
        )
        put_s = 0.0
        real_put = sync._put

        async def timed_put(ck: str, e: Any, link: Path | None = None) -> None:
            nonlocal put_s
            t = time.perf_counter()
            await real_put(ck, e, link)
            put_s += time.perf_counter() - t

        sync._put = timed_put  # type: ignore[method-assign]
        before = rss_kib(pid)
        with Sampler(pid) as sampler:
            t0 = time.perf_counter()
            done = await sync.upload()
            full_s = time.perf_counter() - t0
        assert done is not None
        size = done.size
        # one file changed: only it is sent
        first = sorted(d.iterdir())[0]
        with open(first, "r+b") as f:
            f.write(os.urandom(16))
        put_before = put_s
        t0 = time.perf_counter()
        await sync.upload()
        incr_s = time.perf_counter() - t0
        incr_put_s = put_s - put_before
        # restore the latest into another directory
        r = await http.get(url + "/v1/agent/work", params={"wait": 0}, headers=headers)
        ref = CheckpointRef.model_validate(r.json()["start"][0]["checkpoint"])
        out = d.parent / "restored" / "ck"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir()
        sync.directory = out
        with Sampler(pid) as restore_sampler:
            t0 = time.perf_counter()
            await sync.restore(ref)
            restore_s = time.perf_counter() - t0
        shutil.rmtree(out.parent, ignore_errors=True)
        beat.cancel()
    return {
        "bytes": size,
        "upload_s": round(full_s, 3),
        "upload_mib_s": round(size / MiB / full_s, 1),
        "objects_put_s": round(put_before, 3),
        "objects_mib_s": round(size / MiB / put_before, 1),
        "incremental_s": round(incr_s, 3),
        "incremental_put_s": round(incr_put_s, 3),
        "restore_s": round(restore_s, 3),
        "restore_mib_s": round(size / MiB / restore_s, 1),
        "coordinator_rss_before_mib": round(before / 1024, 1),
        "coordinator_rss_peak_upload_mib": round(sampler.peak / 1024, 1),
        "coordinator_rss_peak_restore_mib": round(restore_sampler.peak / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--store",
        choices=["dir", "s3"],
        default="dir",
        help="the coordinator's checkpoint store: its directory, or moto's S3 server",
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpunet-ckbench-"))
    server = None
    try:
        with s3_bucket(root) if args.store == "s3" else _none() as (flags, env):
            server, url, admin = start_server(root, flags, env)
            runs, peak_hwm = _runs(args, root, server, url, admin)
            server.terminate()
            server.wait(timeout=30)
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    keys = [k for k in runs[0] if k != "bytes"]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "store": args.store,
        "size_mib": args.size_mib,
        "files": args.files,
        "runs": runs,
        "median": {k: statistics.median(r[k] for r in runs) for k in keys},
        "coordinator_vmhwm_mib": round(peak_hwm / 1024, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for k, v in report["median"].items():
        print(f"{k:36} {v}")
    print(f"{'coordinator_vmhwm_mib':36} {report['coordinator_vmhwm_mib']}")


@contextmanager
def _none() -> Iterator[tuple[list[str], dict[str, str]]]:
    yield [], {}


def _runs(
    args: argparse.Namespace, root: Path, server: subprocess.Popen[bytes], url: str, admin: str
) -> tuple[list[dict[str, Any]], int]:
    node, att = attempt(url, admin)
    runs = []
    for i in range(args.runs):
        d = root / f"run{i}" / "ck"
        write_files(d, args.files, args.size_mib)
        runs.append(asyncio.run(one_run(url, node, att, d, server.pid)))
        shutil.rmtree(d.parent, ignore_errors=True)
    return runs, rss_kib(server.pid, "VmHWM")


if __name__ == "__main__":
    main()
