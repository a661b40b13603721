"""``gpunet gpus``: list GPUs, move them through their lifecycle, show a GPU's timeline."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gpunet.cli import fleet, formats
from gpunet.cli.output import JsonOpt, console, fmt, print_json, table
from gpunet.sdk.client import Client
from gpunet.wire import resources as R

gpus_app = typer.Typer(
    help="GPUs: list them, drain/activate/retire/recycle them, show a GPU's timeline.",
    invoke_without_command=True,
    no_args_is_help=False,
)

ReasonOpt = Annotated[str, typer.Option("--reason", help="why (kept in the GPU's timeline)")]
GpuArg = Annotated[str, typer.Argument(help="GPU id, e.g. node-1a2b3c/0")]


@gpus_app.callback()
def gpus_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Every GPU with live telemetry and its lifecycle state."""
    if ctx.invoked_subcommand is None:
        fleet.gpus(json_out)


def _act(action: str, gpu_id: str, reason: str, json_out: bool) -> None:
    with Client() as client:
        g = client.gpu_action(gpu_id, action, reason)
    if json_out:
        print_json(g)
    else:
        console.print(f"GPU {g['id']} is now {g['lifecycle_state']}")


@gpus_app.command("drain")
def drain(gpu_id: GpuArg, reason: ReasonOpt, json_out: JsonOpt = False) -> None:
    """No new work on this GPU (running work finishes)."""
    _act("drain", gpu_id, reason, json_out)


@gpus_app.command("activate")
def activate(gpu_id: GpuArg, reason: ReasonOpt, json_out: JsonOpt = False) -> None:
    """Put a drained GPU (or one in maintenance) back into service."""
    _act("activate", gpu_id, reason, json_out)


@gpus_app.command("maintain")
def maintain(gpu_id: GpuArg, reason: ReasonOpt, json_out: JsonOpt = False) -> None:
    """A drained GPU goes into maintenance."""
    _act("maintain", gpu_id, reason, json_out)


@gpus_app.command("retire")
def retire(gpu_id: GpuArg, reason: ReasonOpt, json_out: JsonOpt = False) -> None:
    """Take a drained GPU out of the fleet for good."""
    _act("retire", gpu_id, reason, json_out)


@gpus_app.command("recycle")
def recycle(gpu_id: GpuArg, reason: ReasonOpt, json_out: JsonOpt = False) -> None:
    """A retired GPU was recycled (the end of its life)."""
    _act("recycle", gpu_id, reason, json_out)


@gpus_app.command("show")
def show(gpu_id: GpuArg, json_out: JsonOpt = False) -> None:
    """The GPU's whole timeline: lifecycle events, health incidents, the work it ran."""
    with Client() as client:
        g = client.gpu_timeline(gpu_id)
    if json_out:
        print_json(g)
        return
    rows: list[tuple[str, Any]] = [
        ("model", f"{g['model']}{' (simulated)' if g['simulated'] else ''}"),
        ("state", g["lifecycle_state"]),
        ("tier", g["tier"]),
        ("health", g["health_status"]),
        ("first seen", formats.when(g["first_seen"])),
        ("busy", f"{formats.duration(g['busy_s'])} over {len(g['attempts'])} attempt(s)"),
    ]
    for k, v in rows:
        console.print(f"  {k:11} {fmt(v)}")
    if g.get("energy", {}).get("gpu_joules"):
        console.print(f"  {'energy':11} {energy_line(g['energy'])}")
    if g.get("tco"):
        t = g["tco"]
        console.print(
            f"  {'cost':11} {formats.per_hour(t['cost_per_hour'])}, per useful GPU-hour "
            f"{formats.credits(t['cost_per_useful_hour'])}, "
            f"rent {formats.per_hour(t['rent_per_hour'])}: {t['recommendation']}"
        )
    for r in g["health_reasons"]:
        console.print(f"  {'':11} [red]{r}[/]")
    table(
        g["events"],
        [
            ("at", "AT", formats.when),
            ("kind", "KIND"),
            ("from", "FROM"),
            ("to", "TO"),
            ("reason", "REASON"),
            ("actor", "BY"),
        ],
        title="timeline",
    )
    if g.get("benchmarks"):
        for b in g["benchmarks"]:
            b["note"] = " | ".join(b["reasons"]) + (" (simulated)" if b["simulated"] else "")
        table(
            g["benchmarks"],
            [
                ("at", "AT", formats.when),
                ("kind", "KIND"),
                ("score_pct", "SCORE", formats.percent),
                ("drift_pp", "DRIFT pp", lambda v: formats.number(v, 1)),
                ("flagged", "FLAGGED"),
                ("note", "NOTE"),
            ],
            title="benchmarks (% of the model's reference)",
        )
    if g["attempts"]:
        table(
            g["attempts"],
            [
                ("attempt_id", "ATTEMPT"),
                ("job_id", "JOB"),
                ("state", "STATE"),
                ("started_at", "STARTED", formats.when),
                ("seconds", "RAN", formats.duration),
                ("reason", "REASON"),
            ],
            title="work",
        )


@gpus_app.command("tiers")
def tiers(
    apply: Annotated[bool, typer.Option("--apply", help="apply the proposed moves")] = False,
    gpu: Annotated[
        list[str] | None, typer.Option("--gpu", help="only this GPU (repeatable)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Proposed tier for every GPU in service (training | inference | secondary | retire),
    with the reasons; --apply applies them (a retire proposal drains the GPU)."""
    with Client() as client:
        rows = client.apply_tiers(gpu or None) if apply else client.tiers()
    if gpu and not apply:
        rows = [r for r in rows if r["gpu_id"] in gpu]
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["why"] = " | ".join(r["reasons"])
    table(
        rows,
        [
            ("gpu_id", "GPU"),
            ("model", "MODEL"),
            ("score_pct", "SCORE", formats.percent),
            ("fleet_percentile", "FLEET PCTL", lambda v: formats.number(v, 0)),
            ("drift_pp", "DRIFT pp", lambda v: formats.number(v, 1)),
            ("current", "TIER"),
            ("proposed", "PROPOSED"),
            ("why", "REASONS"),
        ],
        title="applied" if apply else "proposed tiers",
    )


def energy_line(e: R.EnergySummary | dict[str, Any]) -> str:
    """'0.42 kWh GPU, 0.66 kWh facility (PUE 1.58), 0.31 kg CO2e, cost 0.08'."""
    if isinstance(e, dict):
        e = R.parse(R.EnergySummary, e)
    pue = f" (PUE {formats.significant(e.pue)})" if e.pue is not None else ""
    return (
        f"{formats.kwh(e.gpu_kwh)} GPU, {formats.kwh(e.facility_kwh)} facility{pue}, "
        f"{formats.co2e(e.co2e_kg)}, cost {formats.credits(e.cost)}"
    )


@gpus_app.command("energy")
def energy(json_out: JsonOpt = False) -> None:
    """Energy, CO2e and cost of the work run, per owner and per GPU."""
    with Client() as client:
        rows = client.energy()
    if json_out:
        print_json(rows)
        return
    flat = []
    for o in rows:
        who = o.get("account") or o["account_id"]
        flat.append({"who": who, "line": energy_line(o)})
        flat += [{"who": f"  {g['gpu_id']}", "line": energy_line(g)} for g in o["gpus"]]
    table(flat, [("who", "OWNER / GPU"), ("line", "ENERGY")], title="energy")


@gpus_app.command("purchase")
def purchase(
    price: Annotated[float, typer.Option(help="purchase price per GPU")],
    date: Annotated[str, typer.Option(help="purchase date, YYYY-MM-DD")],
    gpu_id: Annotated[str | None, typer.Argument(help="GPU id (or use --model)")] = None,
    model: Annotated[str | None, typer.Option(help="every GPU of this model you own")] = None,
) -> None:
    """Record what a GPU (or every GPU of a model) cost and when it was bought."""
    with Client() as client:
        ids = client.record_purchase(price, date, gpu_id=gpu_id, model=model)
    console.print(f"recorded for {len(ids)} GPU(s): {', '.join(ids)}")
