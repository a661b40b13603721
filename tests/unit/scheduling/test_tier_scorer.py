"""The tier scorer: jobs prefer GPUs of the duty tier they belong on."""

from __future__ import annotations

from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, explain, plan
from gpunet.core.scheduling.scorers import tier_fit
from gpunet.core.tiers import wanted_tiers


def _fleet(tiers: dict[str, str | None]) -> Snapshot:
    gpus = tuple(
        GpuView(f"{node}-g{i}", node, "A100-80GB", 80000, (8, 0), tier=tier)
        for node, tier in tiers.items()
        for i in range(2)
    )
    return Snapshot(tuple(NodeView(n) for n in tiers), gpus)


def test_wanted_tiers() -> None:
    assert wanted_tiers("llm-inference", 4) == ("inference", "secondary")
    assert wanted_tiers(None, 1) == ("inference", "secondary")
    assert wanted_tiers(None, 2) == ("training",)
    assert wanted_tiers("resnet", 1) == ("training",)


def test_tier_fit() -> None:
    train = JobRequest("t", "a", gpu_count=2)
    assert tier_fit(train, "training") == 1.0
    assert tier_fit(train, "secondary") == 0.0
    assert tier_fit(train, None) == 0.5


def test_training_and_small_jobs_go_to_their_tiers() -> None:
    snap = _fleet({"train": "training", "infer": "inference"})
    big = explain(snap, JobRequest("big", "a", gpu_count=2))
    small = explain(snap, JobRequest("small", "a", gpu_count=1))
    assert big.placed is not None and big.placed.node_id == "train"
    assert small.placed is not None and small.placed.node_id == "infer"
    assert big.scores["tier"] > 0 and small.scores["tier"] > 0
    # both at once: each gets its own tier
    p = plan(snap, [JobRequest("big", "a", gpu_count=2), JobRequest("small", "a", gpu_count=1)])
    assert {pl.job_id: pl.node_id for pl in p.placements} == {"big": "train", "small": "infer"}


def test_a_fleet_without_tiers_scores_as_before() -> None:
    snap = _fleet({"n1": None, "n2": None})
    exp = explain(snap, JobRequest("j", "a", gpu_count=1))
    assert exp.placed is not None and exp.scores["tier"] == 0.05  # 0.5 x weight, everywhere
