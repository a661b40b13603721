"""Long-running commands: up (a whole local network), server (coordinator), agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import uvicorn

from gpunet.agent.gpus.base import GpuBackend
from gpunet.agent.gpus.simulated import SimulatedBackend, parse_simulate
from gpunet.agent.loop import Agent, Rejected
from gpunet.agent.owner import OwnerPolicy, parse_policy
from gpunet.agent.sandbox import Isolation, Limits, SandboxConfig, image_jobs, probe
from gpunet.agent.sandbox.image_jobs import ContainerHost
from gpunet.cli.output import console, err_console
from gpunet.config import ClientConfig, home
from gpunet.core.gangs import parse_ports
from gpunet.core.scheduling.policies import get_policy
from gpunet.errors import GpunetError, ValidationFailed
from gpunet.services.auth import ADMIN_ACCOUNT, Authenticator, Role, bootstrap_admin, issue_token
from gpunet.services.runtime import Runtime, Settings
from gpunet.store.db import Database
from gpunet.store.lockfile import hold_sqlite_lock
from gpunet.tls import check_server_pair, client_context, is_loopback

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


def owner_policy_for(text: str | None, hook: str | None, available: str | None) -> OwnerPolicy:
    """The owner policy from the agent's options; a bad one is refused naming its option."""
    try:
        return parse_policy(text, hook=hook, available=available)
    except ValidationFailed as exc:
        _refuse(f"--{exc.field}", exc.reason)


def containers_for(
    agent_dir: Path, mode: str, iso: Isolation, job_network: str
) -> ContainerHost | None:
    """Probe for a container runtime (``--containers auto``) and say what was found."""
    if mode not in ("auto", "off"):
        _refuse("--containers", f"{mode!r}: must be auto or off")
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


def _refuse(option: str, reason: str) -> NoReturn:
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
        _refuse("--isolation", f"{isolation!r}: must be auto, sandbox or none")
    if job_network not in ("host", "none"):
        _refuse("--job-network", f"{job_network!r}: must be host or none")
    ro = [str(p.resolve()) for p in sandbox_ro or []]
    for p in ro:
        for secret in (agent_dir.resolve(), home().resolve()):
            if Path(p) == secret or Path(p) in secret.parents or secret in Path(p).parents:
                _refuse("--sandbox-ro", f"{p} overlaps {secret}, which holds tokens")
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


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _private_home() -> Path:
    """From here on, everything gpunet creates (the SQLite database and its -wal/-shm files,
    tokens, the client config) is readable by its owner only."""
    os.umask(0o077)
    base = home()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    return base


def _restrict_sqlite(database_url: str) -> None:
    """Files an older release created with the default umask are closed too."""
    if not database_url.startswith("sqlite:///"):
        return
    path = Path(database_url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        f = path.with_name(path.name + suffix)
        if f.exists():
            os.chmod(f, 0o600)


def _write_admin_token(token: str) -> Path:
    path = home() / "admin-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def _prepare(database_url: str) -> tuple[Database, str | None]:
    hold_sqlite_lock(database_url)  # a second coordinator on one SQLite file is refused
    db = Database(database_url)
    db.migrate()
    _restrict_sqlite(database_url)
    token = bootstrap_admin(db)
    if token:
        _write_admin_token(token)
    return db, token


def _valid(db: Database, token: str | None, role: Role) -> bool:
    if not token:
        return False
    try:
        return Authenticator(db).authenticate(token).role is role
    except GpunetError:
        return False


def _kept_admin(db: Database) -> str | None:
    """The admin token a previous start saved (admin-token, else client.json), if still valid."""
    candidates = []
    with contextlib.suppress(OSError):
        candidates.append((home() / "admin-token").read_text().strip())
    with contextlib.suppress(OSError, ValueError):
        candidates.append(str(json.loads(ClientConfig.path().read_text()).get("token") or ""))
    return next((t for t in candidates if _valid(db, t, Role.ADMIN)), None)


def _agent_registered(db: Database, agent_home: Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((agent_home / "agent.json").read_text())
        return _valid(db, saved.get("token"), Role.AGENT)
    return False


class _Server(uvicorn.Server):
    """uvicorn, releasing long-polls as soon as a stop begins."""

    def __init__(self, config: uvicorn.Config, rt: Runtime) -> None:
        super().__init__(config)
        self.rt = rt

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.rt.wakeups.close()
        await super().shutdown(sockets)


def _uvicorn(
    settings: Settings,
    db: Database,
    host: str,
    port: int,
    tls: tuple[Path, Path] | None = None,
) -> uvicorn.Server:
    from gpunet.api.app import create_app

    app = create_app(settings, db=db)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # long-polls would hold a graceful stop for their whole wait,
        # while the lease reaper runs on without hearing heartbeats
        timeout_graceful_shutdown=5,
        # agents heartbeat every few seconds: keep their connections open between calls
        timeout_keep_alive=75,
    )
    return _Server(config, app.state.runtime)


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
    _logging(verbose)
    tls = _tls_pair(host, tls_cert, tls_key, insecure_http)
    get_policy(policy)  # an unknown policy is an error now, not at the first pass
    _private_home()
    _check_checkpoint_store(checkpoint_store, checkpoint_dir)
    url = database_url or f"sqlite:///{home() / 'gpunet.db'}"
    db, token = _prepare(url)
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
    _uvicorn(settings, db, host, port, tls).run()


def _check_checkpoint_store(url: str | None, directory: Path | None) -> None:
    """An s3:// store is reached now: a wrong bucket, endpoint or credential (or boto3
    missing) stops the start with an error naming --checkpoint-store."""
    if url is None:
        return
    if directory is not None:
        raise ValidationFailed(
            "checkpoint_store", "--checkpoint-store and --checkpoint-dir exclude each other"
        )
    from gpunet.services.checkpoint_store import store_for

    store_for(url, home() / "checkpoints", check=True)


def _tls_pair(
    host: str, cert: Path | None, key: Path | None, insecure_http: bool
) -> tuple[Path, Path] | None:
    """The certificate and key to serve https with, checked now; None for plain http, which
    is refused on a non-loopback address unless ``insecure_http`` (then said loudly)."""
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        raise ValidationFailed(missing, "--tls-cert and --tls-key go together")
    if cert is not None and key is not None:
        check_server_pair(cert, key)
        return cert, key
    if not is_loopback(host):
        if not insecure_http:
            raise GpunetError(
                f"refusing plain http on {host}: tokens would cross the network in clear. "
                "Pass --tls-cert FILE --tls-key FILE, or --insecure-http when a TLS proxy "
                "in front of gpunet terminates https"
            )
        err_console.print(
            f"[bold red]WARNING: serving plain http on {host}: every token and job crosses "
            "the network in clear. Use --tls-cert/--tls-key unless a TLS proxy is in front.[/]"
        )
    return None


def site_labels(
    pue: float | None, tariff: float | None, grid: float | None, country: str | None
) -> dict[str, str]:
    """The node labels that give its site's energy figures (core.energy.site_from_labels)."""
    given = {"pue": pue, "tariff_per_kwh": tariff, "grid_gco2e_per_kwh": grid}
    labels = {k: f"{v:g}" for k, v in given.items() if v is not None}
    if country:
        labels["country"] = country.upper()
    return labels


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
    _logging(verbose)
    policy = owner_policy_for(owner_policy, owner_hook, available)
    verify: bool | ssl.SSLContext = True
    if coordinator.startswith("https:"):
        verify = client_context(ca_file)
        if ca_file is not None:  # the agent's watchdog reaches the coordinator too
            os.environ["GPUNET_CA_FILE"] = str(ca_file.expanduser().resolve())
    agent_dir = agent_home or home() / "agent"
    iso = isolation_for(
        agent_dir,
        isolation=isolation,
        accept_unisolated=accept_unisolated_jobs,
        attempt_memory_gb=attempt_memory_gb,
        attempt_pids=attempt_pids,
        attempt_cpus=attempt_cpus,
        job_network=job_network,
        sandbox_ro=sandbox_ro,
    )
    backend = pick_backend(simulate, faults=faults or agent_dir / "faults.yaml")
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
        containers=containers_for(agent_dir, containers, iso, job_network),
        labels=site_labels(site_pue, site_tariff, site_grid, site_country),
        owner_policy=policy,
        advertise_addr=advertise_addr,
        rendezvous_ports=_port_range(rendezvous_ports),
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


def _port_range(text: str | None) -> str | None:
    """``--rendezvous-ports`` checked here, so a typo stops the agent with one line."""
    if text is None:
        return None
    try:
        lo, hi = parse_ports(text)
    except ValueError as exc:
        raise ValidationFailed("rendezvous_ports", str(exc)) from None
    return f"{lo}-{hi}"


def _local_network(
    port: int, simulate: str | None, policy: str, iso: Isolation | None = None
) -> tuple[uvicorn.Server, Agent, GpuBackend, str, Path]:
    """A coordinator on SQLite under GPUNET_HOME plus one agent, and a client config."""
    get_policy(policy)
    base = _private_home()
    url = f"sqlite:///{base / 'gpunet.db'}"
    db, minted = _prepare(url)
    # tokens are minted once and kept: a restart must not leave a trail of valid admin tokens
    admin = minted or _kept_admin(db)
    if admin is None:
        with db.transaction() as s:
            admin = issue_token(s, Role.ADMIN, "admin", name="gpunet up: local client")
        _write_admin_token(admin)
    join = None
    if not _agent_registered(db, base / "agent"):
        with db.transaction() as s:
            # the local GPUs are the local admin's own: its jobs run there even unisolated
            join = issue_token(s, Role.PROVIDER, ADMIN_ACCOUNT, name="gpunet up: local agent")
    api = f"http://127.0.0.1:{port}"
    if iso is None:
        iso = probe(base / "agent", SandboxConfig())
    cfg_path = ClientConfig(api, admin).save()
    backend = pick_backend(simulate)
    srv = _uvicorn(Settings(database_url=url, policy=policy), db, "127.0.0.1", port)
    a = Agent(
        api,
        backend,
        base / "agent",
        join_token=join,
        name=socket.gethostname(),
        isolation=iso,
        # the local network is the owner's own: its jobs are the owner's
        accepts_unisolated=True,
    )
    return srv, a, backend, api, cfg_path


async def _serve(srv: uvicorn.Server, a: Agent, then: Callable[[], int] | None = None) -> int:
    """Serve until Ctrl-C (or until ``then``, run in a thread, returns)."""
    serving = asyncio.create_task(srv.serve())
    while not srv.started and not serving.done():
        await asyncio.sleep(0.05)
    if serving.done():
        await serving
        return 1
    agent_task = asyncio.create_task(a.run())
    rc = 0
    if then is not None:
        rc = await asyncio.to_thread(then)
        a.stopping.set()
        await agent_task
        srv.should_exit = True
    await serving  # returns when uvicorn has handled Ctrl-C / SIGTERM, or should_exit
    a.stopping.set()
    await agent_task
    return rc


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
    _logging(verbose)
    iso = isolation_for(
        home() / "agent",
        isolation=isolation,
        accept_unisolated=accept_unisolated_jobs,
        attempt_memory_gb=attempt_memory_gb,
        attempt_pids=attempt_pids,
        attempt_cpus=attempt_cpus,
        job_network=job_network,
        sandbox_ro=sandbox_ro,
    )
    srv, a, backend, api, cfg_path = _local_network(port, simulate, policy, iso)
    a.accepts_unisolated = accept_unisolated_jobs
    a.containers = containers_for(home() / "agent", containers, iso, job_network)
    kind = "simulated " if backend.simulated else ""
    console.print(
        f"gpunet is up: API {api}  ({len(backend.discover())} {kind}GPU(s), data in {home()})"
    )
    console.print(
        f"client config written to {cfg_path}; try `gpunet nodes` in another "
        "terminal. Ctrl-C stops."
    )
    asyncio.run(_serve(srv, a))
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
    from gpunet.sdk.client import Client

    _logging(False)
    srv, a, backend, api, _ = _local_network(port, simulate, "fifo")
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

    rc = asyncio.run(_serve(srv, a, run_sample))
    raise typer.Exit(rc)
