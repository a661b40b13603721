"""End to end: faults injected into simulated GPUs drive the health rules; real processes,
driven by the CLI; each test on one database, two on each (the integration tests run the
health rules on both)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import only_on
from tests.e2e.procs import Network, two_agent_network, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def net(tmp_path: Path, db_url: str) -> Iterator[Network]:
    def slow_a2(_: Network) -> None:
        # a2's GPU benchmarks at 60% of its reference from its burn-in on
        (tmp_path / "agent-a2").mkdir()
        (tmp_path / "agent-a2" / "faults.yaml").write_text("gpus:\n  0: {benchmark_pct: 60}\n")

    with two_agent_network(tmp_path, db_url, "1xA100-80GB", prepare=slow_a2) as n:
        yield n


def _inject(net: Network, node_id: str, faults: str) -> None:
    agent = next(a for a in net.agents if net.agent_credentials(a)["node_id"] == node_id)
    (net.root / f"agent-{agent}" / "faults.yaml").write_text(textwrap.dedent(faults))


def _gpu(net: Network, gpu_id: str) -> dict[str, Any]:
    return next(g for g in net.cli_json(net.admin, "gpus") if g["id"] == gpu_id)


@only_on("postgres")  # the requeue
def test_xid_79_drains_the_gpu_and_the_job_finishes_on_another_node(
    net: Network, tmp_path: Path
) -> None:
    user = net.user
    spec = tmp_path / "job.yaml"
    spec.write_text(
        textwrap.dedent("""
        name: survivor
        command:
          - python3
          - -c
          - |
            import os, time
            time.sleep(60 if os.environ['GPUNET_ATTEMPT_NUMBER'] == '1' else 0.5)
            print('done')
        max_retries: 1
    """)
    )
    job_id = net.cli_json(user, "submit", str(spec))["id"]
    first = wait_for(
        lambda: (j := net.job(user, job_id))["state"] == "running" and j,
        20,
        "the job to run",
    )
    node, gpu_id = first["node_id"], first["gpu_ids"][0]
    _inject(net, node, "gpus:\n  0: {xids: [79]}\n")
    wait_for(
        lambda: net.job(user, job_id)["state"] == "succeeded",
        40,
        "the job to finish on the other node",
    )
    done = net.cli_json(user, "jobs", "show", job_id)
    assert done["node_id"] != node
    assert [a["state"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert "XID 79" in done["attempts"][0]["reason"]
    g = _gpu(net, gpu_id)
    assert g["lifecycle_state"] == "drained"
    t = net.cli_json(net.admin, "gpus", "show", gpu_id)
    drained = [e for e in t["events"] if e["to"] == "drained"]
    assert drained and drained[0]["actor"] == "rule:health" and "XID 79" in drained[0]["reason"]
    assert [a["job_id"] for a in t["attempts"]] == [job_id]
    # the operator brings it back, with a reason; the human-readable timeline shows it all
    r = net.cli(net.admin, "gpus", "activate", gpu_id, "--reason", "host rebooted")
    assert r.returncode == 0, r.stderr
    assert _gpu(net, gpu_id)["lifecycle_state"] == "active"
    shown = net.cli(net.admin, "gpus", "show", gpu_id)
    assert shown.returncode == 0 and "host rebooted" in shown.stdout
    bad = net.cli(net.admin, "gpus", "retire", gpu_id, "--reason", "old")
    assert bad.returncode == 1 and "cannot become retired" in bad.stderr
    assert "Traceback" not in bad.stderr


@only_on("sqlite")  # a simulated fault
def test_ecc_uncorrectable_fails_the_gpu_with_the_reason(net: Network) -> None:
    gpus = net.cli_json(net.admin, "gpus")
    victim = gpus[0]
    _inject(net, victim["node_id"], "gpus:\n  0: {ecc_uncorrected_volatile: 4}\n")
    wait_for(
        lambda: any(
            x["id"] == victim["id"] and x["health_status"] == "failed"
            for x in net.api(net.admin, "/v1/gpus")
        ),
        20,
        "the GPU to fail",
    )
    g = _gpu(net, victim["id"])
    assert g["lifecycle_state"] == "drained" and not g["healthy"]
    assert g["health_reasons"] == ["volatile uncorrected ECC count is 4 (> 0): DRAIN"]
    listing = net.cli(net.admin, "gpus")
    assert listing.returncode == 0 and "drained" in listing.stdout


@only_on("sqlite")  # the agent's benchmark
def test_a_gpu_benchmarking_at_60_percent_is_proposed_for_a_lower_tier(net: Network) -> None:
    wait_for(
        lambda: (
            (t := net.api(net.admin, "/v1/tiers"))
            and all(r["score_pct"] is not None for r in t)
            and len(t) == 2
        ),
        30,
        "burn-in benchmarks of both GPUs",
    )
    rows = net.cli_json(net.admin, "gpus", "tiers")
    assert len(rows) == 2 and all(r["score_pct"] is not None for r in rows), rows
    slow_node = net.agent_credentials("a2")["node_id"]
    by_node = {r["gpu_id"].split("/")[0]: r for r in rows}
    slow = by_node[slow_node]
    fast = next(r for n, r in by_node.items() if n != slow_node)
    assert (fast["score_pct"], fast["proposed"]) == (100.0, "training")
    assert (slow["score_pct"], slow["proposed"]) == (60.0, "inference")
    assert any("60% of reference" in r for r in slow["reasons"])
    shown = net.cli_json(net.admin, "gpus", "show", slow["gpu_id"])
    assert shown["benchmarks"][0]["flagged"] and shown["benchmarks"][0]["simulated"]
    applied = net.cli(net.admin, "gpus", "tiers", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert _gpu(net, slow["gpu_id"])["tier"] == "inference"
    assert _gpu(net, fast["gpu_id"])["tier"] == "training"


@only_on("postgres")  # energy rows
def test_energy_of_a_finished_job_equals_the_counter_delta(net: Network) -> None:
    user = net.user
    r = net.cli(user, "run", "--gpus", "1", "--", "python3", "-c", "import time; time.sleep(3)")
    assert r.returncode == 0, r.stderr
    job_id = net.cli_json(user, "jobs")[0]["id"]
    job = net.cli_json(user, "jobs", "show", job_id)
    (g,) = job["energy"]["gpus"]
    assert g["method"] == "counter" and g["resets"] == 0 and g["seconds"] >= 3
    assert g["joules"] == pytest.approx(g["counter_end_j"] - g["counter_start_j"], abs=0.01)
    # a simulated A100 draws 85% of its 400 W TDP while busy
    assert g["joules"] == pytest.approx(340.0 * g["seconds"], rel=0.05)
    assert job["energy"]["co2e_kg"] > 0 and job["energy"]["pue"] == 1.58
    shown = net.cli(user, "jobs", "show", job_id)
    assert "kWh GPU" in shown.stdout and "CO2e" in shown.stdout
    # the GPU's measured energy feeds the cost of ownership
    bought = net.cli(
        net.admin,
        "gpus",
        "purchase",
        "--model",
        "A100-80GB",
        "--price",
        "15000",
        "--date",
        "2025-01-15",
    )
    assert bought.returncode == 0 and "recorded for 2 GPU(s)" in bought.stdout, bought.stderr
    png = net.root / "tco.png"
    rep = net.cli_json(net.admin, "report", "tco", "--png", str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"
    used = next(r for r in rep["gpus"] if r["gpu_id"] == g["gpu_id"])
    assert used["power_source"] == "measured energy of its work" and used["utilization"] > 0
    assert used["recommendation"] in ("keep", "move tier", "sell", "retire") and used["reasons"]
    text = net.cli(net.admin, "report", "tco")
    assert text.returncode == 0 and "capital: 15000 / (5.25 y x 8760 h)" in text.stdout
