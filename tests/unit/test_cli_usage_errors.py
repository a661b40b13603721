"""Usage errors print one line and a hint, never a Python traceback; --version works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpunet import __version__


def _gpunet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpunet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "GPUNET_HOME": "/nonexistent-gpunet-home"},
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("jobs", "show"), "Missing argument 'JOB_ID'"),
        (("run", "--gpus", "two", "--", "true"), "'two' is not a valid integer"),
        (("nodes", "--bogus"), "No such option"),
    ],
)
def test_usage_errors_name_the_problem_without_a_traceback(
    args: tuple[str, ...], said: str
) -> None:
    out = _gpunet(*args)
    assert out.returncode == 2
    assert said in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_version() -> None:
    out = _gpunet("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"gpunet {__version__}"
