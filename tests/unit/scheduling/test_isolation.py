"""Placement by a node's isolation, runtimes and owner: filters, explanations, never_fits."""

from __future__ import annotations

import pytest

from gpunet.core.isolation import Isolation, check_image, check_runtimes
from gpunet.core.scheduling import (
    GpuView,
    JobRequest,
    NodeView,
    Snapshot,
    explain,
    never_fits,
    plan,
)

NONE, SANDBOX, CONTAINER = Isolation.NONE, Isolation.SANDBOX, Isolation.CONTAINER


def snap(*nodes: NodeView, per_node: int = 2, busy: frozenset[str] = frozenset()) -> Snapshot:
    gpus = tuple(
        GpuView(f"{n.id}-g{k}", n.id, "A100-80GB", 80_000, (8, 0), busy=f"{n.id}-g{k}" in busy)
        for n in nodes
        for k in range(per_node)
    )
    return Snapshot(tuple(nodes), gpus)


def node(nid: str, owner: str | None = "owner", **kw: object) -> NodeView:
    return NodeView(nid, owner=owner, **kw)  # type: ignore[arg-type]


def job(account: str = "user", **kw: object) -> JobRequest:
    return JobRequest(id="j", account=account, **kw)  # type: ignore[arg-type]


def test_isolation_levels_are_ordered_none_sandbox_container() -> None:
    assert NONE < SANDBOX < CONTAINER
    assert CONTAINER >= SANDBOX and not SANDBOX >= CONTAINER
    assert sorted([CONTAINER, NONE, SANDBOX]) == [NONE, SANDBOX, CONTAINER]
    assert SANDBOX <= "sandbox" and NONE < "container"


def test_runtime_and_image_checks_name_the_problem() -> None:
    assert check_runtimes(["podman", "docker", "podman"]) == ["docker", "podman"]
    with pytest.raises(ValueError, match="'Pod man' is not a runtime name"):
        check_runtimes(["Pod man"])
    with pytest.raises(ValueError, match="at most 8 runtimes"):
        check_runtimes([f"r{i}" for i in range(9)])
    assert check_image("ghcr.io/org/train@sha256:abc") == "ghcr.io/org/train@sha256:abc"
    for bad, why in (
        ("a b", "whitespace"),
        ("-v=/:/host", "start with '-'"),
        ("x\x00y", "control"),
        ("i" * 513, "at most 512"),
    ):
        with pytest.raises(ValueError, match=why):
            check_image(bad)


def test_isolation_below_the_requirement_is_named_with_both_levels() -> None:
    s = snap(
        node("plain", accepts_unisolated=True),
        node("sand", isolation=SANDBOX),
        node("box", isolation=CONTAINER, runtimes=("podman",)),
    )
    exp = explain(s, job(isolation=CONTAINER))
    assert exp.rejections == {
        "isolation none < required container": 2,
        "isolation sandbox < required container": 2,
    }
    assert exp.placed is not None and exp.placed.node_id == "box"
    exp = explain(s, job(isolation=SANDBOX, gpu_count=2))
    assert exp.rejections == {"isolation none < required sandbox": 2}
    assert exp.fitting_gpus == 4


def test_image_jobs_need_a_node_with_a_runtime() -> None:
    s = snap(
        node("bare", isolation=CONTAINER), node("rt", isolation=CONTAINER, runtimes=("docker",))
    )
    exp = explain(s, job(isolation=CONTAINER, needs_runtime=True))
    assert exp.rejections == {"no container runtime": 2}
    assert exp.placed is not None and exp.placed.node_id == "rt"
    # without an image the runtime does not matter
    assert explain(s, job(isolation=CONTAINER)).fitting_gpus == 4


def test_trusted_owners_limit_the_nodes() -> None:
    s = snap(
        node("a1", owner="alice", isolation=SANDBOX),
        node("b1", owner="bob", isolation=SANDBOX),
    )
    exp = explain(s, job(owners=("bob",)))
    assert exp.rejections == {"owner not trusted by the job": 2}
    assert exp.placed is not None and exp.placed.node_id == "b1"
    assert explain(s, job(owners=())).fitting_gpus == 4
    # a node without a known owner is never a trusted owner's node
    s2 = snap(node("anon", owner=None))
    assert explain(s2, job(owners=("bob",))).rejections == {"owner not trusted by the job": 2}


def test_unisolated_node_runs_only_its_owners_jobs_unless_accepted() -> None:
    s = snap(node("home", owner="alice"))
    stranger = explain(s, job("mallory"))
    assert stranger.rejections == {"unisolated node runs only its owner's jobs": 2}
    assert stranger.placed is None
    assert explain(s, job("alice")).placed is not None
    # the owner accepts the risk: anyone's job may run there
    assert explain(snap(node("home", owner="alice", accepts_unisolated=True)), job("x")).placed
    # a sandboxed node takes strangers' jobs; a node without an owner (simulator) does too
    assert explain(snap(node("home", owner="alice", isolation=SANDBOX)), job("x")).placed
    assert explain(snap(node("sim", owner=None)), job("x")).placed


def test_each_gpu_is_counted_once_under_the_first_failing_filter() -> None:
    # untrusted owner and too little isolation: counted as the owner (checked first)
    s = snap(
        node("n1", owner="bob"),
        node("n2", owner="alice", isolation=SANDBOX),
        node("n3", owner="alice", isolation=CONTAINER),
        node("n4", owner="alice", isolation=CONTAINER, runtimes=("podman",)),
        busy=frozenset({"n4-g0"}),
    )
    exp = explain(s, job("carol", owners=("alice",), isolation=CONTAINER, needs_runtime=True))
    assert exp.rejections == {
        "owner not trusted by the job": 2,
        "isolation sandbox < required container": 2,
        "no container runtime": 2,
        "busy": 1,
    }
    assert exp.fitting_gpus == 1
    assert exp.fitting_gpus + sum(exp.rejections.values()) == 8
    assert exp.summary() == (
        "1/8 GPUs fit: 2 isolation sandbox < required container, 2 no container runtime, "
        "2 owner not trusted by the job, 1 busy"
    )


def test_plan_keeps_private_nodes_per_account_with_shared_views() -> None:
    # two accounts with identical needs: the cached per-job view must not leak between them
    s = snap(node("home", owner="alice"), per_node=2)
    jobs = [
        JobRequest("m", account="mallory", submitted_at=0.0),
        JobRequest("a", account="alice", submitted_at=1.0),
    ]
    p = plan(s, jobs, "fifo")
    assert [pl.job_id for pl in p.placements] == ["a"]
    assert p.explanations["m"].rejections == {"unisolated node runs only its owner's jobs": 2}


def test_never_fits_names_the_lasting_reasons_and_lets_busy_ones_wait() -> None:
    s = snap(node("n1", isolation=SANDBOX), node("n2", owner="bob", isolation=SANDBOX))
    why = never_fits(s, job(isolation=CONTAINER, needs_runtime=True))
    assert why is not None and "4 isolation sandbox < required container" in why
    why = never_fits(snap(node("n1", isolation=CONTAINER)), job(needs_runtime=True))
    assert why is not None and "2 no container runtime" in why
    why = never_fits(s, job(owners=("carol",)))
    assert why is not None and "4 owner not trusted by the job" in why
    why = never_fits(snap(node("home", owner="alice")), job("mallory"))
    assert why is not None and "unisolated node runs only its owner's jobs" in why
    # a fleet that fits, even if every GPU is busy or the node is offline, only waits
    busy = snap(
        node("n1", isolation=CONTAINER, runtimes=("podman",), online=False),
        busy=frozenset({"n1-g0", "n1-g1"}),
    )
    assert never_fits(busy, job(isolation=CONTAINER, needs_runtime=True)) is None


def test_defaults_change_nothing_for_fleets_without_owners() -> None:
    s = snap(NodeView("a"), NodeView("b"))
    p = plan(s, [JobRequest("j1", "x", gpu_count=2), JobRequest("j2", "y", gpu_count=2)])
    assert sorted(pl.node_id for pl in p.placements) == ["a", "b"]
