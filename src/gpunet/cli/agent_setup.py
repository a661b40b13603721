"""What ``gpunet agent`` (and ``gpunet up``) set up before the agent runs: its GPUs, its
isolation, its container runtime, its owner policy. Imported when one of those commands runs,
so the rest of the command line starts without the agent's modules."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NoReturn

import typer

from gpunet.agent.gpus.base import GpuBackend
from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.agent.owner import OwnerPolicy, parse_policy
from gpunet.agent.sandbox import Isolation, Limits, SandboxConfig, image_jobs, probe
from gpunet.agent.sandbox.image_jobs import ContainerHost
from gpunet.cli.output import console, err_console
from gpunet.config import home
from gpunet.core.gangs import parse_ports
from gpunet.errors import ValidationFailed

DEFAULT_SIMULATED = "2xA100-80GB"


def pick_backend(
    simulate: str | None, *, quiet: bool = False, faults: Path | None = None
) -> GpuBackend:
    """NVML when there is an NVIDIA GPU and no --simulate; else simulated GPUs, said plainly.
    ``faults``: the fault-injection profile simulated GPUs re-read."""
    if simulate:
        return SimulatedBackend(parse_simulate(simulate), seed=socket.gethostname(), faults=faults)
    from gpunet.agent.gpus.nvml import NvmlBackend, NvmlUnavailable

    try:
        return NvmlBackend()
    except NvmlUnavailable as exc:
        if not quiet:
            err_console.print(
                f"[yellow]No NVIDIA GPU here ({exc}); running on simulated GPUs: "
                f"{DEFAULT_SIMULATED}[/]"
            )
        return SimulatedBackend(parse_simulate(DEFAULT_SIMULATED), seed=socket.gethostname())


def owner_policy_for(text: str | None, hook: str | None, available: str | None) -> OwnerPolicy:
    """The owner policy from the agent's options; a bad one is refused naming its option."""
    try:
        return parse_policy(text, hook=hook, available=available)
    except ValidationFailed as exc:
        refuse(f"--{exc.field}", exc.reason)


def containers_for(
    agent_dir: Path, mode: str, iso: Isolation, job_network: str
) -> ContainerHost | None:
    """Probe for a container runtime (``--containers auto``) and say what was found."""
    if mode not in ("auto", "off"):
        refuse("--containers", f"{mode!r}: must be auto or off")
    if mode == "off":
        return None
    limits = iso.sandbox.config.limits if iso.sandbox else Limits(pids=4096)
    # a container never shares the host's network: with --job-network host it gets the
    # runtime's private network (NAT), with none only loopback
    network = "private" if job_network == "host" else "none"
    host, line = image_jobs.find(agent_dir, limits, network=network)
    if host is None:
        err_console.print(f"[yellow]{line}[/]")
    elif iso.level != "sandbox":
        err_console.print(
            f"[yellow]{line}; without a sandbox for jobs that name no image, this node "
            "offers isolation none[/]"
        )
    else:
        console.print(line)
    return host


def refuse(option: str, reason: str) -> NoReturn:
    """Stop with a usage error naming the option."""
    err_console.print(f"[red]{option} {reason}[/]")
    raise typer.Exit(2)


def isolation_for(
    agent_dir: Path,
    *,
    isolation: str,
    accept_unisolated: bool,
    attempt_memory_gb: float | None,
    attempt_pids: int,
    attempt_cpus: float | None,
    job_network: str,
    sandbox_ro: list[Path] | None,
) -> Isolation:
    """Probe the host's isolation, say what was found, and stop when ``sandbox`` was demanded
    but cannot be had."""
    if isolation not in ("auto", "sandbox", "none"):
        refuse("--isolation", f"{isolation!r}: must be auto, sandbox or none")
    if job_network not in ("host", "none"):
        refuse("--job-network", f"{job_network!r}: must be host or none")
    ro = [str(p.resolve()) for p in sandbox_ro or []]
    for p in ro:
        for secret in (agent_dir.resolve(), home().resolve()):
            if Path(p) == secret or Path(p) in secret.parents or secret in Path(p).parents:
                refuse("--sandbox-ro", f"{p} overlaps {secret}, which holds tokens")
    config = SandboxConfig(
        limits=Limits(
            memory_bytes=int(attempt_memory_gb * 1024**3) if attempt_memory_gb else None,
            pids=attempt_pids,
            cpus=attempt_cpus,
        ),
        network=job_network,
        ro_extra=ro,
    )
    iso = probe(agent_dir, config, want=isolation)
    if iso.level == "sandbox":
        console.print(iso.line())
    else:
        err_console.print(f"[yellow]{iso.line()}[/]")
        if isolation == "sandbox":
            err_console.print("[red]--isolation sandbox: refusing to start without it[/]")
            raise typer.Exit(1)
        if accept_unisolated:
            err_console.print(
                "[yellow]--accept-unisolated-jobs: strangers' jobs will run here as bare "
                "processes with this agent's user and access[/]"
            )
        else:
            err_console.print(
                "[yellow]only the owner's own jobs will run here (no isolation; pass "
                "--accept-unisolated-jobs to take others' jobs anyway)[/]"
            )
    return iso


def site_labels(
    pue: float | None, tariff: float | None, grid: float | None, country: str | None
) -> dict[str, str]:
    """The node labels that give its site's energy figures (core.energy.site_from_labels)."""
    given = {"pue": pue, "tariff_per_kwh": tariff, "grid_gco2e_per_kwh": grid}
    labels = {k: f"{v:g}" for k, v in given.items() if v is not None}
    if country:
        labels["country"] = country.upper()
    return labels


def port_range(text: str | None) -> str | None:
    """``--rendezvous-ports`` checked here, so a typo stops the agent with one line."""
    if text is None:
        return None
    try:
        lo, hi = parse_ports(text)
    except ValueError as exc:
        raise ValidationFailed("rendezvous_ports", str(exc)) from None
    return f"{lo}-{hi}"
