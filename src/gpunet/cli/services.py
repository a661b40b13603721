"""`gpunet services`: deploy, list, show, scale and stop services (docs/services.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gpunet.cli import formats
from gpunet.cli.output import JsonOpt, console, err_console, print_json, table
from gpunet.errors import ValidationFailed
from gpunet.sdk.client import Client

services_app = typer.Typer(
    help="Services: replicas answering requests through the coordinator's gateway.",
    no_args_is_help=False,
    invoke_without_command=True,
)

COLUMNS = [
    ("name", "NAME"),
    ("model", "MODEL"),
    ("ready", "READY"),
    ("desired", "WANTED"),
    ("min_replicas", "MIN"),
    ("max_replicas", "MAX"),
    ("path", "PATH"),
    ("reason", "WHY"),
]


def deploy_spec(spec: dict[str, Any], workdir: Path | None, json_out: bool) -> None:
    """Deploy one service spec and say where it answers (also `gpunet submit`'s path for a
    spec with a ``service:`` block)."""
    with Client() as client:
        svc = client.deploy(spec, workdir=workdir)
        url = client.url.rstrip("/") + svc["path"]
    if json_out:
        print_json(svc)
        return
    console.print(
        f"deployed service [bold]{svc['name']}[/]: {svc['desired']} replica(s) wanted "
        f"(min {svc['min_replicas']}, max {svc['max_replicas']})",
    )
    console.print(f"  {url}", markup=False, highlight=False)
    if svc.get("model"):
        console.print(
            f"  model {svc['model']}: {client.url.rstrip('/')}/v1/... (OpenAI-compatible)",
            markup=False,
            highlight=False,
        )


@services_app.callback()
def services_list(
    ctx: typer.Context,
    stopped: Annotated[bool, typer.Option("--all", help="stopped services too")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List your services: replicas ready and wanted, where they answer, the latest decision."""
    if ctx.invoked_subcommand:
        return
    with Client() as client:
        rows = client.services(stopped)
    if json_out:
        print_json(rows)
        return
    table(rows, COLUMNS)


@services_app.command("deploy")
def services_deploy(
    file: Annotated[Path, typer.Argument(help="a service spec (YAML with a service: block)")],
    workdir: Annotated[
        Path | None, typer.Option(help="directory to upload as the replicas' working directory")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Deploy a service (`gpunet submit FILE` does the same for a spec with service:)."""
    from gpunet.cli.jobs import files_referred, load_specs

    specs = load_specs([file])
    if len(specs) != 1:
        raise ValidationFailed("file", "one service spec per deploy")
    spec = specs[0][1]
    if workdir is None and files_referred(spec, file.parent):
        workdir = file.parent
    deploy_spec(spec, workdir, json_out)


@services_app.command("show")
def services_show(name: str, json_out: JsonOpt = False) -> None:
    """A service in full: replicas (node, readiness), the autoscaler, its latest decisions."""
    with Client() as client:
        svc = client.service(name)
    if json_out:
        print_json(svc)
        return
    console.print(f"[bold]{svc['name']}[/] ({svc['id']})  {svc['state']}")
    rows = [
        ("account", svc.get("account") or "-"),
        ("model", svc.get("model") or "-"),
        ("replicas", f"{svc['ready']} ready, {svc['starting']} starting, {svc['desired']} wanted"),
        ("bounds", f"min {svc['min_replicas']}, max {svc['max_replicas']}"),
        ("path", svc["path"]),
        ("why", svc["reason"]),
    ]
    auto = svc.get("autoscaler")
    if auto:
        rows.append(
            (
                "in flight",
                f"{auto['inflight']} now; {formats.number(auto['stable_inflight'], 1)} over the "
                f"stable window, {formats.number(auto['panic_inflight'], 1)} over the panic "
                f"window{' (panic)' if auto['panic'] else ''}",
            )
        )
    for k, v in rows:
        console.print(f"  {k:10} {v}", markup=False, highlight=False)
    if svc["replicas"]:
        table(
            svc["replicas"],
            [
                ("job_id", "REPLICA"),
                ("state", "STATE"),
                ("ready", "READY"),
                ("node_id", "NODE"),
                ("started_at", "STARTED"),
            ],
            title="replicas",
        )
    if svc["decisions"]:
        table(
            list(reversed(svc["decisions"])),
            [("at", "AT"), ("desired", "WANTED"), ("reason", "WHY")],
            title="decisions (newest first)",
        )


@services_app.command("scale")
def services_scale(
    name: str,
    min_replicas: Annotated[
        int | None, typer.Option("--min", help="fewest replicas (0: may sleep)")
    ] = None,
    max_replicas: Annotated[int | None, typer.Option("--max", help="most replicas")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Change how few and how many replicas the autoscaler may run."""
    if min_replicas is None and max_replicas is None:
        raise ValidationFailed("min", "give --min, --max or both")
    with Client() as client:
        svc = client.scale_service(name, min_replicas, max_replicas)
    if json_out:
        print_json(svc)
        return
    err_console.print(f"{svc['name']}: {svc['reason']}", markup=False, highlight=False)


@services_app.command("key")
def services_key(
    name: str,
    label: Annotated[str, typer.Option("--name", help="a label for the key")] = "",
    expires: Annotated[str | None, typer.Option(help="e.g. 30d; default: never")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a key that calls this service (through the gateway) and nothing else; it is
    printed once. Revoke it with `gpunet tokens revoke ID`."""
    with Client() as client:
        key = client.service_key(name, label, expires)
    if json_out:
        print_json(key)
        return
    print(key["token"])
    err_console.print(
        f"a key for service {name} (token {key['id']}): shown once; "
        f"revoke with `gpunet tokens revoke {key['id']}`",
        markup=False,
        highlight=False,
    )


@services_app.command("stop")
def services_stop(name: str, json_out: JsonOpt = False) -> None:
    """Stop a service: its replicas are cancelled (deploy it again to restart it)."""
    with Client() as client:
        svc = client.stop_service(name)
    if json_out:
        print_json(svc)
        return
    err_console.print(f"stopped service {svc['name']}", markup=False, highlight=False)
