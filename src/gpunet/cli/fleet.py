"""Fleet commands: nodes, gpus."""

from __future__ import annotations

from typing import Annotated

import typer

from gpunet.cli import formats
from gpunet.cli.output import Column, JsonOpt, model_table, print_ids, print_json
from gpunet.sdk.client import Client
from gpunet.wire import resources as R

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print only the ids, one a line")]


def nodes(json_out: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """The nodes of the network."""
    with Client() as client:
        if json_out:
            print_json(client.nodes())
            return
        rows = client.node_models()
    if quiet:
        print_ids(n.id for n in rows)
        return
    model_table(rows, NODE_COLUMNS)


NODE_COLUMNS: list[Column[R.Node]] = [
    ("NODE", lambda n: n.id),
    ("NAME", lambda n: n.name),
    ("STATUS", lambda n: n.status),
    ("GPUS", lambda n: n.gpus),
    ("BUSY", lambda n: n.gpus_busy),
    ("MODELS", lambda n: formats.items(n.gpu_models)),
    ("OWNER", lambda n: n.owner or n.account_id),
    ("ISOLATION", lambda n: n.isolation),
    ("RUNTIMES", lambda n: formats.items(n.runtimes)),
    ("RELIABILITY", lambda n: formats.fraction(n.reliability)),
    ("SIMULATED", lambda n: n.simulated),
    ("LAST HEARTBEAT", lambda n: formats.when(n.last_heartbeat_at)),
]


def gpus(json_out: JsonOpt = False) -> None:
    """Every GPU with live telemetry (utilization, memory, temperature, power)."""
    with Client() as client:
        if json_out:
            print_json(client.gpus())
            return
        rows = client.gpu_resources()
    model_table(rows, GPU_COLUMNS)


def gpu_state(g: R.Gpu) -> str:
    """One word for a GPU: its lifecycle state unless active, else unhealthy, drained, busy
    or idle."""
    if g.lifecycle_state != "active":
        return str(g.lifecycle_state)
    if not g.healthy:
        return "unhealthy"
    if g.drained:
        return "drained"
    return "owner_busy" if g.owner_busy else "busy" if g.busy else "idle"


GPU_COLUMNS: list[Column[R.Gpu]] = [
    ("GPU", lambda g: g.id),
    ("MODEL", lambda g: g.model),
    ("STATE", gpu_state),
    ("OWNER", lambda g: g.owner),
    ("UTIL", lambda g: formats.percent(g.utilization_pct)),
    (
        "MEMORY",
        lambda g: (
            f"{formats.gb((g.memory_used_mb or 0) / 1000)} of {formats.gb(g.memory_mb / 1000)}"
        ),
    ),
    ("TEMP C", lambda g: formats.number(g.temperature_c, 0)),
    ("POWER W", lambda g: formats.number(g.power_w, 0)),
    ("SIMULATED", lambda g: g.simulated),
]
