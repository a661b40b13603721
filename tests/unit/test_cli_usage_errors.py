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
        # one per command group
        (("jobs", "why"), "Missing argument 'JOB_ID'"),
        (("gpus", "drain"), "Missing argument 'GPU_ID'"),
        (("tokens", "revoke"), "Missing argument 'TOKEN_ID'"),
        (("accounts", "create"), "Missing argument 'NAME'"),
        (("sim", "run", "--policy"), "'--policy' requires an argument"),
        (("price", "set", "--bogus"), "No such option '--bogus'"),
        (("credits", "grant", "--account"), "'--account' requires an argument"),
        (("quota", "set", "--gpus", "x"), "'x' is not a valid integer"),
        (("ledger", "verify", "--bogus"), "No such option '--bogus'"),
        (("report", "tco", "--bogus"), "No such option '--bogus'"),
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
