"""A tiny container image built here from a static busybox (no registry is reachable), for
the tests of image jobs. Skips, with the measured error, where podman cannot run containers."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from gpunet.agent.sandbox.container import RuntimeInfo, detect_podman, runtime_env

IMAGE = "localhost/gpunet-test:latest"
APPLETS = ("sh", "cat", "echo", "id", "ls", "seq", "sleep", "test", "touch", "true", "wc", "wget")


def _busybox_rootfs_tar(busybox: Path) -> bytes:
    """A root filesystem holding a static busybox and links for the applets the tests use."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "workspace", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buf.getvalue()


def podman_with_test_image() -> RuntimeInfo:
    """Podman, when it runs containers here, with the test image imported."""
    runtime = detect_podman(timeout_s=30)
    if not runtime.works:
        pytest.skip(f"podman cannot run containers here: {runtime.reason}")
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no busybox to build the test image from (install busybox-static)")
    head = Path(busybox).read_bytes()[:8192]
    if b"ld-linux" in head or b"/lib/ld-" in head:
        pytest.skip(f"{busybox} is dynamically linked; the test image needs busybox-static")
    exe = runtime.path or "podman"
    made = subprocess.run(
        [exe, "import", "-", IMAGE],
        input=_busybox_rootfs_tar(Path(busybox)),
        capture_output=True,
        timeout=60,
        env=runtime_env(runtime),
    )
    assert made.returncode == 0, made.stderr.decode()
    return runtime
