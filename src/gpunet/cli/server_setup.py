"""What ``gpunet server`` (and ``gpunet up``, ``gpunet demo``) set up before serving: the
private home, the store and its admin token, TLS, the uvicorn server. Imported when one of
those commands runs, so the rest of the command line starts without the server's modules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from gpunet.agent.gpus.base import GpuBackend
from gpunet.agent.loop import Agent
from gpunet.agent.sandbox import Isolation, SandboxConfig, probe
from gpunet.api.app import create_app
from gpunet.cli.agent_setup import pick_backend
from gpunet.cli.output import err_console
from gpunet.config import ClientConfig, home
from gpunet.core.scheduling.policies import get_policy
from gpunet.errors import GpunetError, ValidationFailed
from gpunet.services.auth import ADMIN_ACCOUNT, Authenticator, Role, bootstrap_admin, issue_token
from gpunet.services.checkpoint_store import store_for
from gpunet.services.runtime import Runtime
from gpunet.settings import Settings
from gpunet.store.db import Database
from gpunet.store.lockfile import hold_sqlite_lock
from gpunet.tls import check_server_pair, is_loopback


def private_home() -> Path:
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


def prepare(database_url: str) -> tuple[Database, str | None]:
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


def uvicorn_server(
    settings: Settings,
    db: Database,
    host: str,
    port: int,
    tls: tuple[Path, Path] | None = None,
) -> uvicorn.Server:
    """The coordinator's app in a uvicorn server (not yet started)."""
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


def check_checkpoint_store(url: str | None, directory: Path | None) -> None:
    """An s3:// store is reached now: a wrong bucket, endpoint or credential (or boto3
    missing) stops the start with an error naming --checkpoint-store."""
    if url is None:
        return
    if directory is not None:
        raise ValidationFailed(
            "checkpoint_store", "--checkpoint-store and --checkpoint-dir exclude each other"
        )
    store_for(url, home() / "checkpoints", check=True)


def tls_pair(
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


def local_network(
    port: int, simulate: str | None, policy: str, iso: Isolation | None = None
) -> tuple[uvicorn.Server, Agent, GpuBackend, str, Path]:
    """A coordinator on SQLite under GPUNET_HOME plus one agent, and a client config."""
    get_policy(policy)
    base = private_home()
    url = f"sqlite:///{base / 'gpunet.db'}"
    db, minted = prepare(url)
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
    srv = uvicorn_server(Settings(database_url=url, policy=policy), db, "127.0.0.1", port)
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


async def serve_until_stopped(
    srv: uvicorn.Server, a: Agent, then: Callable[[], int] | None = None
) -> int:
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
