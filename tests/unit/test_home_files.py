"""`gpunet up` keeps its files private and its admin token stable across starts."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gpunet.cli.server_setup import local_network
from gpunet.config import ClientConfig
from gpunet.store.tables import Token


@pytest.fixture
def gpunet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("GPUNET_HOME", str(home))
    old = os.umask(0o022)  # a typical default: files would be 0644 without gpunet's own
    try:
        yield home
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _start(port: int = 1) -> str:
    srv, agent, _, _, cfg = local_network(port, "1xA100-80GB", "fifo")
    asyncio.run(agent.http.aclose())
    rt = srv.config.app.state.runtime  # type: ignore[attr-defined]
    with rt.db.sessions() as s:
        admins = s.scalar(select(func.count()).select_from(Token).where(Token.role == "admin"))
    rt.db.dispose()
    loaded = ClientConfig.load()
    assert loaded is not None and cfg == ClientConfig.path()
    return f"{loaded.token} {admins}"


def test_up_files_are_private_and_the_admin_token_is_kept(gpunet_home: Path) -> None:
    first = _start()
    assert _mode(gpunet_home) == 0o700
    for name in ("gpunet.db", "admin-token", "client.json"):
        assert _mode(gpunet_home / name) == 0o600, name
    for name in ("gpunet.db-wal", "gpunet.db-shm"):
        if (gpunet_home / name).exists():
            assert _mode(gpunet_home / name) == 0o600, name
    token, admins = first.split()
    assert (gpunet_home / "admin-token").read_text().strip() == token
    assert admins == "1"

    # a second start reuses the token: nothing new is minted, and loose modes are closed
    os.chmod(gpunet_home / "gpunet.db", 0o644)
    os.chmod(gpunet_home, 0o755)
    assert _start() == first
    assert _mode(gpunet_home / "gpunet.db") == 0o600 and _mode(gpunet_home) == 0o700


def test_a_lost_admin_token_is_minted_again_once(gpunet_home: Path) -> None:
    token, _ = _start().split()
    (gpunet_home / "admin-token").unlink()
    ClientConfig.path().unlink()
    again, admins = _start().split()
    assert again != token and admins == "2"
    assert _mode(gpunet_home / "admin-token") == 0o600
    assert _start() == f"{again} 2"
