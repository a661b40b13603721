"""The README's "Using it" commands run as written, in the order shown, against the `gpunet up
--simulate` the README starts, in a fresh home: each must exit 0.

The block to run sits between the README's ``<!-- readme-test:start -->`` and
``<!-- readme-test:end -->`` markers; the `gpunet up` line comes from the section's first
block. The one thing added to it is ``--port`` (a free one), so that tests may run side by side.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.procs import Proc, free_port, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
START, END = "<!-- readme-test:start -->", "<!-- readme-test:end -->"


def section(text: str, heading: str) -> str:
    """The text of a ``## heading`` section, up to the next heading of its level."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"the README has no section {heading!r}"
    return m.group(1)


def readme_block(text: str) -> str:
    """The bash between the markers (exactly one fenced block)."""
    assert text.count(START) == 1 and text.count(END) == 1, "one pair of readme-test markers"
    inner = text.split(START, 1)[1].split(END, 1)[0]
    m = re.fullmatch(r"\s*```bash\n(.*?)```\s*", inner, re.S)
    assert m, "the readme-test markers must hold one ```bash block"
    return m.group(1)


def up_command(text: str) -> list[str]:
    """The `gpunet up --simulate ...` line of the section's first block, without its comment."""
    first = re.search(r"```bash\n(.*?)```", section(text, "Using it"), re.S)
    assert first
    lines = [ln for ln in first.group(1).splitlines() if ln.startswith("gpunet up --simulate")]
    assert len(lines) == 1, first.group(1)
    return shlex.split(lines[0], comments=True)


def commands(block: str) -> list[str]:
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_markers_hold_the_using_it_commands() -> None:
    text = (REPO / "README.md").read_text()
    block = readme_block(text)
    assert START in section(text, "Using it")
    cmds = commands(block)
    assert len(cmds) >= 20 and all("gpunet" in c for c in cmds), cmds
    assert up_command(text)[:3] == ["gpunet", "up", "--simulate"]


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    block, up = readme_block(text), up_command(text)
    home = tmp_path / "home"
    home.mkdir()
    # `gpunet` on PATH is this interpreter's gpunet, whatever is installed elsewhere
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "gpunet"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m gpunet "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200")
    port = free_port()
    server = Proc([*up[1:], "--port", str(port)], env, tmp_path / "up.log")
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
            60,
            "gpunet up to answer",
        )
        wait_for(lambda: (home / ".gpunet" / "client.json").exists(), 30, "the client config")

        def node_listed() -> bool:
            r = subprocess.run(
                ["gpunet", "nodes", "-q"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return r.returncode == 0 and bool(r.stdout.strip())

        wait_for(node_listed, 60, "the local agent to join")
        script = tmp_path / "readme.sh"
        # -e: the first command that fails stops the run, and the trap names it
        script.write_text(
            "set -e\n"
            "trap 'echo \"README command failed: $BASH_COMMAND\" >&2' ERR\n"
            "PS4='+ README: '\n"
            "set -x\n" + block
        )
        r = subprocess.run(
            ["bash", str(script)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = r.stdout + r.stderr
        assert r.returncode == 0, out + "\n--- gpunet up\n" + server.output()[-3000:]
        ran = [ln for ln in r.stderr.splitlines() if ln.startswith("+ README: gpunet")]
        assert len(ran) >= len([c for c in commands(block) if c.startswith("gpunet")]), out
        assert "hello" in r.stdout and "done" in r.stdout, out  # the two jobs' output
        assert "Traceback" not in out, out
    finally:
        server.stop()
