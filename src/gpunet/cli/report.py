"""``gpunet report``: cost of ownership."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpunet.cli import formats
from gpunet.cli.output import console, print_json, table
from gpunet.sdk.client import Client

report_app = typer.Typer(help="Reports: cost of ownership.", no_args_is_help=True)


@report_app.command("tco")
def tco(
    json_out: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    png: Annotated[Path | None, typer.Option("--png", help="plot cost vs rent to FILE")] = None,
) -> None:
    """Per GPU and per fleet: capital, energy and space cost per hour, utilization, cost per
    useful GPU-hour, market rent, and keep | move tier | sell | retire with the arithmetic."""
    with Client() as client:
        rep = client.tco()
    if png is not None:
        from gpunet.services.tco import plot

        plot(rep, str(png))
    if json_out:
        print_json(rep)
        return
    table(
        rep["gpus"],
        [
            ("gpu_id", "GPU"),
            ("model", "MODEL"),
            ("capital_per_hour", "CAPITAL", formats.per_hour),
            ("energy_per_hour", "ENERGY", formats.per_hour),
            ("space_per_hour", "SPACE", formats.per_hour),
            ("utilization", "UTIL", formats.fraction),
            ("cost_per_useful_hour", "PER USEFUL h", formats.credits),
            ("rent_per_hour", "RENT", formats.per_hour),
            ("recommendation", "RECOMMEND"),
        ],
        title="cost of ownership (USD)",
    )
    for r in rep["gpus"]:
        console.print(f"[bold]{r['gpu_id']}[/] {r['recommendation']}: {'; '.join(r['reasons'])}")
        for line in r["arithmetic"]:
            console.print(f"    {line}")
    f = rep["fleet"]
    console.print(
        f"fleet: {f['gpus']} GPUs, {formats.per_hour(f['cost_per_hour'])}, "
        f"utilization {formats.fraction(f['utilization'])}, "
        f"per useful GPU-hour {formats.credits(f['cost_per_useful_hour'])}"
    )
    if png is not None:
        console.print(f"plot written to {png}")
