"""Fleet commands: nodes, gpus."""

from __future__ import annotations

from typing import Annotated

import typer

from gpunet.cli.output import print_json, table
from gpunet.sdk.client import Client

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def nodes(json_out: JsonOpt = False) -> None:
    """The nodes of the network."""
    with Client() as client:
        rows = client.nodes()
    if json_out:
        print_json(rows)
        return
    table(
        rows,
        [
            ("id", "NODE"),
            ("name", "NAME"),
            ("status", "STATUS"),
            ("gpus", "GPUS"),
            ("gpus_busy", "BUSY"),
            ("gpu_models", "MODELS"),
            ("owner", "OWNER"),
            ("isolation", "ISOLATION"),
            ("runtimes", "RUNTIMES"),
            ("reliability", "RELIABILITY"),
            ("simulated", "SIMULATED"),
            ("last_heartbeat_at", "LAST HEARTBEAT"),
        ],
    )


def gpus(json_out: JsonOpt = False) -> None:
    """Every GPU with live telemetry (utilization, memory, temperature, power)."""
    with Client() as client:
        rows = client.gpus()
    if json_out:
        print_json(rows)
        return
    for r in rows:
        r["memory"] = f"{(r['memory_used_mb'] or 0) / 1000:.1f}/{r['memory_mb'] / 1000:.0f} GB"
        r["state"] = (
            r["lifecycle_state"]
            if r.get("lifecycle_state") not in (None, "active")
            else "unhealthy"
            if not r["healthy"]
            else "drained"
            if r["drained"]
            else "busy"
            if r["busy"]
            else "idle"
        )
    table(
        rows,
        [
            ("id", "GPU"),
            ("model", "MODEL"),
            ("state", "STATE"),
            ("utilization_pct", "UTIL %"),
            ("memory", "MEMORY"),
            ("temperature_c", "TEMP C"),
            ("power_w", "POWER W"),
            ("simulated", "SIMULATED"),
        ],
    )
