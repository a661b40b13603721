"""What isolation this host supports, found by trying it, and a one-line reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpunet.agent.sandbox import bwrap, seccomp
from gpunet.agent.sandbox.cgroups import CgroupTree
from gpunet.agent.sandbox.launch import Sandbox, SandboxConfig
from gpunet.agent.sandbox.uids import UidPool

INSTALL_HINT = "install it with apt-get install bubblewrap"
SECCOMP_ON = "seccomp: no user namespaces, keyrings, bpf, mounts"


@dataclass
class Isolation:
    """The probe's answer: ``level`` is "sandbox" or "none"; ``sandbox`` is set for "sandbox"."""

    level: str
    explanation: str
    sandbox: Sandbox | None = None

    def line(self) -> str:
        sep = " " if self.level == "sandbox" else ": "
        return f"isolation: {self.level}{sep}{self.explanation}"


def _bwrap_version(path: str) -> str:
    r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    return r.stdout.strip() or "bubblewrap"


def _trial(sandbox: Sandbox) -> str | None:
    """Run ``true`` in a real sandbox (uid drop and cgroup included); None when it worked."""
    with tempfile.TemporaryDirectory(prefix="gpunet-probe-") as tmp:
        box = sandbox.open("probe", {})
        try:
            if box.uid is not None:
                os.chown(tmp, box.uid, box.uid)
            argv = sandbox.argv(["/bin/sh", "-c", "exit 0"], Path(tmp), [], box)
            r = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=20,
                preexec_fn=box.preexec,
                pass_fds=box.pass_fds,
                env={"PATH": "/usr/bin:/bin"},
            )
        finally:
            box.close()
            sandbox.close()
    if r.returncode != 0:
        return (r.stderr.strip() or f"exit code {r.returncode}").splitlines()[-1]
    return None


def probe(
    home: Path,
    config: SandboxConfig,
    *,
    want: str = "auto",
    uid_first: int = 64000,
    uid_count: int = 64,
    cgroup_root: Path | None = None,
) -> Isolation:
    """Try the sandbox this host allows. ``want``: auto, sandbox or none (the owner's flag)."""
    if want not in ("auto", "sandbox", "none"):
        raise ValueError(f"isolation {want!r}: must be auto, sandbox or none")
    if want == "none":
        return Isolation("none", "chosen by the owner (--isolation none)")
    path = shutil.which("bwrap") or (bwrap.BWRAP if os.path.exists(bwrap.BWRAP) else None)
    if path is None:
        return Isolation("none", f"bubblewrap not found; {INSTALL_HINT}")
    root = os.geteuid() == 0
    if root and not os.path.exists(bwrap.SETPRIV):
        return Isolation("none", f"{bwrap.SETPRIV} not found; install util-linux")
    tree = CgroupTree(cgroup_root) if cgroup_root else CgroupTree()
    why = tree.usable()
    if why:
        return Isolation("none", f"cgroups unusable: {why}")
    uids = UidPool(uid_first, uid_count) if root else None
    try:
        filt: bytes | None = seccomp.program()
        filter_line = SECCOMP_ON
    except seccomp.UnsupportedArch as exc:
        filt, filter_line = None, f"no seccomp filter: {exc}"
    try:
        sandbox = Sandbox(home, config, tree=tree, uids=uids, bwrap_path=path, seccomp_filter=filt)
        failed = _trial(sandbox)
        if failed and filt is not None:
            # a kernel without seccomp filters: the sandbox without one beats none at all
            sandbox.seccomp_filter = None
            if _trial(sandbox) is None:
                filter_line = f"no seccomp filter: bubblewrap could not install it: {failed}"
                failed = None
    except (OSError, subprocess.SubprocessError) as exc:
        failed = str(exc)
    if failed:
        return Isolation("none", f"bubblewrap cannot create a sandbox here: {failed}")
    parts = [_bwrap_version(path)]
    parts.append(uids.describe() if uids else "the agent's own uid (not root)")
    parts.append(tree.describe())
    parts.append(filter_line)
    if config.network == "none":
        parts.append("no network")
    return Isolation("sandbox", f"({', '.join(parts)})", sandbox)
