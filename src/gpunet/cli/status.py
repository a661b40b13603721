"""`gpunet status`: the coordinator, who you are, your money, your jobs and the fleet at once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gpunet.cli import formats
from gpunet.cli.fleet import gpu_state
from gpunet.cli.output import JsonOpt, console, print_json
from gpunet.errors import Forbidden
from gpunet.sdk.client import Client
from gpunet.wire import resources as R

ACTIVE = ("running", "assigned", "queued")


def status(json_out: JsonOpt = False) -> None:
    """The coordinator, your account and balance, your running and queued jobs, the fleet."""
    with Client() as client:
        health = client.healthz()
        who = client.whoami()
        balance = client.balance_model() if who["role"] != "agent" else None
        jobs = [j for state in ACTIVE for j in client.job_models(state=state)]
        try:
            gpus: list[R.Gpu] | None = client.gpu_resources()
            nodes: list[R.Node] | None = client.node_models()
        except Forbidden:  # a role that may not list the fleet
            gpus = nodes = None
    summary = _summary(client.url, health, who, balance, jobs, nodes, gpus)
    if json_out:
        print_json(summary)
        return
    console.print(f"coordinator {summary['coordinator']} (gpunet {summary['version']})")
    if summary["replica"]:
        leader = summary["leader"] or "none elected yet"
        epoch = f", epoch {summary['leader_epoch']}" if summary["leader_epoch"] else ""
        console.print(
            f"replica {summary['replica']}; leader (scheduler, reaper, metering, tiers, "
            f"collection): {leader}{epoch}"
        )
    console.print(f"signed in as {summary['account']} ({summary['role']})")
    if balance is not None:
        console.print(
            f"balance {formats.credits(balance.balance)} credits, "
            f"{formats.credits(balance.held)} held"
        )
    by_state = Counter(j.state.value for j in jobs)
    console.print(
        "your jobs: " + ", ".join(f"{by_state.get(s, 0)} {s}" for s in ACTIVE)
        if jobs
        else "your jobs: none running or queued"
    )
    for j in jobs:
        reason = f": {j.reason}" if j.reason else ""
        console.print(f"  {j.id}  {j.state.value:<9} {j.name}{reason}")
    fleet = summary["fleet"]
    if fleet is not None:
        gpu_states = ", ".join(f"{n} {s}" for s, n in sorted(fleet["gpus"].items()))
        console.print(
            f"fleet: {fleet['nodes_online']}/{fleet['nodes']} nodes online; "
            f"{fleet['gpu_total']} GPUs ({gpu_states or 'none'})"
        )


def _summary(
    url: str,
    health: dict[str, Any],
    who: dict[str, Any],
    balance: R.Balance | None,
    jobs: list[R.JobSummary],
    nodes: list[R.Node] | None,
    gpus: list[R.Gpu] | None,
) -> dict[str, Any]:
    offline = {n.id for n in nodes or [] if n.status != "online"}
    return {
        "coordinator": url,
        "version": health.get("version"),
        # replicas (docs/replicas.md): the one that answered, the one running the singleton loops
        "replica": health.get("replica"),
        "leader": health.get("leader"),
        "leader_epoch": health.get("epoch"),
        "account": balance.account
        if balance is not None
        else who.get("account") or who["account_id"],
        "role": who["role"],
        "balance": None if balance is None else str(balance.balance),
        "held": None if balance is None else str(balance.held),
        "jobs": [
            {"id": j.id, "name": j.name, "state": j.state.value, "reason": j.reason} for j in jobs
        ],
        "fleet": None
        if nodes is None or gpus is None
        else {
            "nodes": len(nodes),
            "nodes_online": sum(1 for n in nodes if n.status == "online"),
            "gpu_total": len(gpus),
            "gpus": dict(
                Counter("offline" if g.node_id in offline else gpu_state(g) for g in gpus)
            ),
        },
    }
