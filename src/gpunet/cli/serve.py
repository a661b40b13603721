"""Long-running commands: up (a whole local network), server (coordinator), agent."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Annotated

import typer

from gpunet.cli.output import console
from gpunet.config import ClientConfig, home
from gpunet.errors import GpunetError
from gpunet.settings import Settings

# The commands' modules (the server's app and store, the agent's sandbox and GPUs) are
# imported when a command runs: every other command starts without them, in a fraction of
# the time (benchmarks: "Command-line start").

IsolationOpt = Annotated[
    str,
    typer.Option(
        "--isolation",
        help="how jobs are isolated: auto (sandbox when the host allows it), sandbox (refuse "
        "to start without it) or none",
    ),
]
AcceptUnisolatedOpt = Annotated[
    bool,
    typer.Option(
        "--accept-unisolated-jobs",
        help="without isolation, run strangers' jobs too (else only the owner's own jobs)",
    ),
]
AttemptMemoryOpt = Annotated[
    float | None, typer.Option(help="memory limit per attempt, in GB", min=0.01)
]
AttemptPidsOpt = Annotated[int, typer.Option(help="process limit per attempt", min=16)]
AttemptCpusOpt = Annotated[float | None, typer.Option(help="CPU limit per attempt", min=0.01)]
JobNetworkOpt = Annotated[
    str, typer.Option(help="network of sandboxed jobs: host or none (no network at all)")
]
SandboxRoOpt = Annotated[
    list[Path] | None,
    typer.Option("--sandbox-ro", help="a host path jobs may read (repeatable)"),
]
ContainersOpt = Annotated[
    str,
    typer.Option(
        "--containers",
        help="run jobs that name an image in podman or docker: auto (when one works) or off",
    ),
]

OwnerPolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--owner-policy",
        help="when the owner takes GPUs back: idle=5m (owner-free time before tenant work), "
        "hook-every=30s, hook-timeout=10s, processes=yes|no; or off (docs/owners.md)",
    ),
]
OwnerHookOpt = Annotated[
    str | None,
    typer.Option("--owner-hook", help="a command run periodically; exit 0 means the owner is busy"),
]
AvailableOpt = Annotated[
    str | None,
    typer.Option(
        "--available",
        help='when tenants may use the GPUs, local time, e.g. "Mon-Fri 19:00-07:00; Sat-Sun"',
    ),
]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def server(
    database_url: Annotated[
        str | None,
        typer.Option(help="sqlite:///PATH or postgresql://...; default: SQLite under GPUNET_HOME"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8787,
    policy: Annotated[
        str, typer.Option(help="scheduling policy: default, fifo, priority, las")
    ] = "default",
    lease_timeout: Annotated[
        float, typer.Option(help="seconds without heartbeats before a node goes offline")
    ] = 30.0,
    burn_in: Annotated[
        bool, typer.Option("--burn-in", help="new GPUs take work only after a burn-in benchmark")
    ] = False,
    auto_tiers: Annotated[
        bool, typer.Option("--auto-tiers", help="apply proposed tier moves without an operator")
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="serve https with this PEM certificate"),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="the certificate's PEM private key"),
    ] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            help="serve plain http on a non-loopback address (only behind a TLS proxy)",
        ),
    ] = False,
    max_log_bytes: Annotated[
        int, typer.Option(help="output kept per attempt; the rest is dropped", min=1024)
    ] = Settings.max_log_bytes,
    max_body_bytes: Annotated[
        int, typer.Option(help="largest request body but an archive upload", min=64 * 1024)
    ] = Settings.max_body_bytes,
    max_upload_bytes: Annotated[
        int, typer.Option(help="largest working-directory archive upload", min=1024)
    ] = Settings.max_upload_bytes,
    blob_quota_bytes: Annotated[
        int, typer.Option(help="stored archives per account", min=0)
    ] = Settings.blob_quota_bytes,
    max_queued_jobs: Annotated[
        int, typer.Option(help="queued and assigned jobs per account", min=1)
    ] = Settings.max_queued_jobs,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="where job checkpoints are stored; default: GPUNET_HOME/checkpoints"),
    ] = None,
    checkpoint_store: Annotated[
        str | None,
        typer.Option(
            help="s3://bucket/prefix: keep checkpoints in an S3-compatible bucket (endpoint "
            "and credentials from AWS_ENDPOINT_URL and the AWS_* variables; pip install "
            "'gpunet[s3]'); default: the checkpoint directory"
        ),
    ] = None,
    checkpoint_quota_bytes: Annotated[
        int, typer.Option(help="bytes of checkpoint files per account", min=0)
    ] = Settings.checkpoint_quota_bytes,
    scheduler_process: Annotated[
        bool | None,
        typer.Option(
            "--scheduler-process/--scheduler-thread",
            help="run the leader's scheduler passes in a child process, or in a thread of "
            "the coordinator; default: a process on PostgreSQL, a thread on SQLite",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the coordinator (migrations are applied at start). On any address but loopback it
    serves https (--tls-cert, --tls-key): tokens must not cross a network in clear."""
    from gpunet.cli import server_setup as setup
    from gpunet.core.scheduling.policies import get_policy

    _logging(verbose)
    tls = setup.tls_pair(host, tls_cert, tls_key, insecure_http)
    get_policy(policy)  # an unknown policy is an error now, not at the first pass
    setup.private_home()
    setup.check_checkpoint_store(checkpoint_store, checkpoint_dir)
    url = database_url or f"sqlite:///{home() / 'gpunet.db'}"
    db, token = setup.prepare(url)
    if token:
        console.print(f"admin token (shown once, also in {home() / 'admin-token'}): {token}")
    settings = Settings(
        database_url=url,
        lease_timeout_s=lease_timeout,
        policy=policy,
        burn_in=burn_in,
        auto_tiers=auto_tiers,
        max_log_bytes=max_log_bytes,
        max_body_bytes=max_body_bytes,
        max_upload_bytes=max_upload_bytes,
        blob_quota_bytes=blob_quota_bytes,
        max_queued_jobs=max_queued_jobs,
        checkpoint_dir=str(checkpoint_dir or home() / "checkpoints"),
        checkpoint_store=checkpoint_store,
        checkpoint_quota_bytes=checkpoint_quota_bytes,
        scheduler_process=scheduler_process,
        replica=f"{socket.gethostname()}:{port}",  # its name among replicas (docs/replicas.md)
    )
    scheme = "https" if tls else "http"
    console.print(f"gpunet coordinator on {scheme}://{host}:{port} ({db.engine.dialect.name})")
    setup.uvicorn_server(settings, db, host, port, tls).run()


def agent(
    coordinator: Annotated[
        str, typer.Option(help="coordinator URL, or several replicas' URL1,URL2 (fail-over)")
    ],
    join_token: Annotated[str | None, typer.Option(help="provider join token (first run)")] = None,
    simulate: Annotated[
        str | None,
        typer.Option(help="simulated GPUs, e.g. 2xA100-80GB,1xRTX-4090, or a fleet YAML"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="node name (default: hostname)")] = None,
    agent_home: Annotated[Path | None, typer.Option("--home", help="agent state directory")] = None,
    site: Annotated[str | None, typer.Option(help="site label, e.g. eu-west")] = None,
    site_pue: Annotated[
        float | None,
        typer.Option(help="the site's PUE, facility power / IT power (default 1.58)", min=1.0),
    ] = None,
    site_tariff: Annotated[
        float | None,
        typer.Option(help="electricity price per kWh at the site (default 0.1175)", min=0.0),
    ] = None,
    site_grid: Annotated[
        float | None,
        typer.Option(help="grid carbon intensity, gCO2e per kWh (default: world average)", min=0),
    ] = None,
    site_country: Annotated[
        str | None,
        typer.Option(help="ISO 3166 alpha-3 country, for its grid carbon intensity, e.g. FRA"),
    ] = None,
    faults: Annotated[
        Path | None,
        typer.Option(help="fault profile for simulated GPUs (default: HOME/faults.yaml)"),
    ] = None,
    benchmark_every: Annotated[
        float, typer.Option(help="seconds between benchmarks of idle GPUs", min=1.0)
    ] = 6 * 3600.0,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            help="PEM of the private CA that signed the coordinator's certificate "
            "(default: the system's trusted CAs)"
        ),
    ] = None,
    isolation: IsolationOpt = "auto",
    accept_unisolated_jobs: AcceptUnisolatedOpt = False,
    attempt_memory_gb: AttemptMemoryOpt = None,
    attempt_pids: AttemptPidsOpt = 4096,
    attempt_cpus: AttemptCpusOpt = None,
    job_network: JobNetworkOpt = "host",
    sandbox_ro: SandboxRoOpt = None,
    containers: ContainersOpt = "auto",
    owner_policy: OwnerPolicyOpt = None,
    owner_hook: OwnerHookOpt = None,
    available: AvailableOpt = None,
    advertise_addr: Annotated[
        str | None,
        typer.Option(
            help="where the other members of a multi-node job reach this machine (default: "
            "the address it reaches the coordinator from; 127.0.0.1 for a local one)"
        ),
    ] = None,
    rendezvous_ports: Annotated[
        str | None,
        typer.Option(
            help="ports a multi-node job whose rank 0 runs here may use, LOW-HIGH "
            "(default 29500-29999)"
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Join this machine's GPUs to a coordinator. Dials out only: works behind NAT."""
    from gpunet.agent.loop import Agent, Rejected
    from gpunet.cli import agent_setup as setup
    from gpunet.tls import client_context

    _logging(verbose)
    policy = setup.owner_policy_for(owner_policy, owner_hook, available)
    verify: bool | ssl.SSLContext = True
    if coordinator.startswith("https:"):
        verify = client_context(ca_file)
        if ca_file is not None:  # the agent's watchdog reaches the coordinator too
            os.environ["GPUNET_CA_FILE"] = str(ca_file.expanduser().resolve())
    agent_dir = agent_home or home() / "agent"
    iso = setup.isolation_for(
        agent_dir,
        isolation=isolation,
        accept_unisolated=accept_unisolated_jobs,
        attempt_memory_gb=attempt_memory_gb,
        attempt_pids=attempt_pids,
        attempt_cpus=attempt_cpus,
        job_network=job_network,
        sandbox_ro=sandbox_ro,
    )
    backend = setup.pick_backend(simulate, faults=faults or agent_dir / "faults.yaml")
    a = Agent(
        coordinator,
        backend,
        agent_dir,
        join_token=join_token,
        name=name,
        site=site,
        verify=verify,
        isolation=iso,
        accepts_unisolated=accept_unisolated_jobs,
        containers=setup.containers_for(agent_dir, containers, iso, job_network),
        labels=setup.site_labels(site_pue, site_tariff, site_grid, site_country),
        owner_policy=policy,
        advertise_addr=advertise_addr,
        rendezvous_ports=setup.port_range(rendezvous_ports),
    )
    a.benchmark_every_s = benchmark_every
    console.print(
        f"gpunet agent: {len(backend.discover())} GPU(s)"
        f"{' (simulated)' if backend.simulated else ''} -> {coordinator}"
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, a.stopping.set)  # stop attempts cleanly, then exit
        await a.run()

    try:
        asyncio.run(main())
    except Rejected as exc:  # e.g. a join token revoked, expired or used up
        raise GpunetError(f"the coordinator refused this agent: {exc.message}") from None


def up(
    port: Annotated[int, typer.Option(help="port for the coordinator")] = 8787,
    simulate: Annotated[
        str | None,
        typer.Option(help="simulated GPUs, e.g. 2xA100-80GB,1xRTX-4090, or a fleet YAML"),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="scheduling policy: default, fifo, priority, las")
    ] = "default",
    isolation: IsolationOpt = "auto",
    accept_unisolated_jobs: AcceptUnisolatedOpt = False,
    attempt_memory_gb: AttemptMemoryOpt = None,
    attempt_pids: AttemptPidsOpt = 4096,
    attempt_cpus: AttemptCpusOpt = None,
    job_network: JobNetworkOpt = "host",
    sandbox_ro: SandboxRoOpt = None,
    containers: ContainersOpt = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a whole local network: a coordinator (SQLite under GPUNET_HOME) and one agent on
    this machine's GPUs. Ctrl-C stops everything."""
    from gpunet.cli import agent_setup, server_setup

    _logging(verbose)
    iso = agent_setup.isolation_for(
        home() / "agent",
        isolation=isolation,
        accept_unisolated=accept_unisolated_jobs,
        attempt_memory_gb=attempt_memory_gb,
        attempt_pids=attempt_pids,
        attempt_cpus=attempt_cpus,
        job_network=job_network,
        sandbox_ro=sandbox_ro,
    )
    srv, a, backend, api, cfg_path = server_setup.local_network(port, simulate, policy, iso)
    a.accepts_unisolated = accept_unisolated_jobs
    a.containers = agent_setup.containers_for(home() / "agent", containers, iso, job_network)
    kind = "simulated " if backend.simulated else ""
    console.print(
        f"gpunet is up: API {api}  ({len(backend.discover())} {kind}GPU(s), data in {home()})"
    )
    console.print(
        f"client config written to {cfg_path}; try `gpunet nodes` in another "
        "terminal. Ctrl-C stops."
    )
    asyncio.run(server_setup.serve_until_stopped(srv, a))
    console.print("gpunet stopped.")


SAMPLE_JOB = {
    "name": "sample",
    "command": [
        "python3",
        "-c",
        "import os, socket; print('hello from gpunet on', socket.gethostname(), "
        "'GPUs', os.environ['CUDA_VISIBLE_DEVICES'])",
    ],
    "resources": {"gpus": 1},
}


def demo(
    port: Annotated[int, typer.Option(help="port for the coordinator")] = 8787,
    simulate: Annotated[str | None, typer.Option(help="simulated GPUs")] = None,
) -> None:
    """Start a local network, run a sample job end to end, print its logs, and stop."""
    from gpunet.cli import server_setup
    from gpunet.sdk.client import Client

    _logging(False)
    srv, a, backend, api, _ = server_setup.local_network(port, simulate, "fifo")
    cfg = ClientConfig.load()
    assert cfg is not None

    def run_sample() -> int:
        with Client(api, cfg.token) as c:
            deadline = time.monotonic() + 30
            while not c.nodes() and time.monotonic() < deadline:
                time.sleep(0.2)
            job = c.submit(SAMPLE_JOB)
            console.print(f"submitted {job['id']}; logs:")
            for chunk in c.follow_logs(job["id"], timeout_s=120):
                console.out(chunk["data"], end="")
            final = c.job(job["id"])
            console.print(
                f"{job['id']} {final['state']} (exit code {final['exit_code']}) on "
                f"{final['node_id']} GPUs {','.join(final['gpu_ids'])}"
            )
            return 0 if final["state"] == "succeeded" else 1

    rc = asyncio.run(server_setup.serve_until_stopped(srv, a, run_sample))
    raise typer.Exit(rc)
