"""The Slurm peer of the burst benchmark runs a tiny burst in both configurations and leaves
nothing behind: no daemon, no job step, no temporary directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import missing

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import slurm_burst  # noqa: E402


@pytest.mark.e2e
@pytest.mark.parametrize("config", slurm_burst.MEASURED)
def test_a_tiny_burst_completes_and_cleans_up(config: str) -> None:
    if slurm_burst.missing_programs():
        missing(slurm_burst.install_hint())
    if os.geteuid() != 0:
        missing("root: slurmd starts the jobs as their user")
    cluster = slurm_burst.Cluster(config)
    with cluster:
        procs = [d.proc for d in cluster.daemons]
        assert {d.name for d in cluster.daemons} == {"munged", "slurmctld", "slurmd"}
        r = cluster.burst(8, "sbatch", 8, timeout=30)
        assert (r["finished"], r["errors"]) == (8, {})
        assert r["jobs_per_s"] > 0
        a = cluster.burst(8, "array", 8, timeout=30)
        assert (a["finished"], a["errors"]) == (8, {})
    assert not cluster.root.exists()
    for p in procs:  # ended and reaped
        assert p.poll() is not None and not Path(f"/proc/{p.pid}").exists(), p.args
    assert slurm_burst.holders(cluster.root) == []
