"""The command line loads only what a command needs: a client command, or the agent, starts
without the server's modules (the store, Alembic, the web stack), and client commands
without the agent's; the coordinator imports matplotlib only to draw. Each case is a fresh
interpreter, since this one has them all loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_SIDE = ["sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "gpunet.store.db"]
AGENT_SIDE = ["gpunet.agent.loop", "gpunet.agent.sandbox", "gpunet.agent.gpus.simulated"]


def loaded_after(code: str, names: list[str]) -> list[str]:
    probe = (
        f"import json, sys\n{code}\nprint(json.dumps([n for n in {names!r} if n in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["jobs", "--help"], ["submit", "--help"], ["agent", "--help"]],
)
def test_a_client_command_loads_neither_the_server_nor_the_agent(argv: list[str]) -> None:
    code = (
        "from typer.testing import CliRunner\n"
        "from gpunet.cli.main import app\n"
        f"r = CliRunner().invoke(app, {argv!r})\n"
        "assert r.exit_code == 0, r.output"
    )
    assert loaded_after(code, SERVER_SIDE + AGENT_SIDE) == []


def test_the_agent_command_loads_the_agent_but_not_the_server() -> None:
    code = (
        "import gpunet.cli.main\n"
        "from gpunet.cli import agent_setup\n"  # what `gpunet agent` imports when it runs
        "from gpunet.agent.loop import Agent\n"
        "from gpunet.tls import client_context"
    )
    assert loaded_after(code, SERVER_SIDE) == []
    assert loaded_after(code, AGENT_SIDE) == AGENT_SIDE


def test_the_server_setup_still_loads_the_server() -> None:
    """The probe itself can see a module load (the cases above would pass vacuously if not)."""
    assert loaded_after("from gpunet.cli import server_setup", SERVER_SIDE) == SERVER_SIDE


def test_the_coordinator_loads_matplotlib_only_for_its_first_plot() -> None:
    assert loaded_after("from gpunet.cli import server_setup", ["matplotlib"]) == []
    first_plot = "from gpunet.web import plots\nplots.money({})"
    assert loaded_after(first_plot, ["matplotlib"]) == ["matplotlib"]
