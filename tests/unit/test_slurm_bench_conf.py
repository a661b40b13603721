"""The Slurm peer of the burst benchmark: the slurm.conf it writes for each configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import slurm_burst  # noqa: E402


def conf(config: str, tmp_path: Path) -> dict[str, str]:
    text = slurm_burst.slurm_conf(config, tmp_path, "node1", 7001, 7010, "root")
    return slurm_burst.parse_conf(text)


def test_default_sets_only_what_one_node_needs(tmp_path: Path) -> None:
    c = conf("default", tmp_path)
    for key in slurm_burst.HIGH_THROUGHPUT:
        assert key not in c, key  # Slurm's own default stays
    assert c["SelectType"] == "select/cons_tres"
    assert c["SlurmctldPort"] == "7001" and c["SlurmdPort"] == "7010"
    assert c["AuthInfo"] == f"socket={tmp_path / 'munge.socket'}"
    assert c["CommunicationParameters"] == "NoCtldInAddrAny,NoInAddrAny"
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldLogFile", "SlurmdPidFile"):
        assert c[key].startswith(str(tmp_path) + "/"), key


def test_high_throughput_carries_the_guides_settings(tmp_path: Path) -> None:
    c = conf("high-throughput", tmp_path)
    assert c["SchedulerType"] == "sched/builtin"
    assert c["SchedulerParameters"] == "max_rpc_cnt=150"
    assert c["SlurmctldDebug"] == c["SlurmdDebug"] == "error"
    assert c["JobCompType"] == "jobcomp/none"
    assert c["AccountingStorageType"] == "accounting_storage/none"
    assert c["MinJobAge"] == "2"
    assert c["SlurmctldPort"] == "7001-7002"  # several ports for bursts of requests
    assert c["SelectType"] == "select/cons_tres"  # and still what one node needs


def test_guide_sample_adds_the_guides_sample_scheduler_parameters(tmp_path: Path) -> None:
    c = conf("guide-sample", tmp_path)
    params = c["SchedulerParameters"].split(",")
    for p in ("defer", "batch_sched_delay=20", "sched_min_interval=2000000", "bf_interval=300"):
        assert p in params, p
    assert c["SchedulerType"] == "sched/builtin" and c["SlurmctldDebug"] == "error"


def test_the_node_has_8_gpus_on_127_0_0_1(tmp_path: Path) -> None:
    text = slurm_burst.slurm_conf("default", tmp_path, "node1", 7001, 7010, "root")
    node = next(line for line in text.splitlines() if line.startswith("NodeName="))
    assert "NodeName=node1 " in node and "NodeAddr=127.0.0.1" in node
    assert "Gres=gpu:8" in node and "CPUs=8" in node
    devices = [tmp_path / f"gpu{i}" for i in range(8)]
    assert slurm_burst.gres_conf(devices).splitlines()[7] == f"Name=gpu File={tmp_path}/gpu7"


def test_an_unknown_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        conf("fast", tmp_path)
