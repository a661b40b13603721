"""End to end over https: a coordinator with a certificate from a private CA (made here with
trustme), agents and the CLI trusting that CA; token use counts, revocation and accounts
through the CLI, whose errors are one line, never a traceback. On SQLite (the integration
tests manage tokens on both databases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.conftest import only_on
from tests.e2e.procs import Network, TlsFiles, wait_for

pytestmark = pytest.mark.e2e


def make_tls(root: Path) -> TlsFiles:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(cert=root / "server.pem", key=root / "server.key", ca=root / "ca.pem")
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@only_on("sqlite")  # https; tokens: integration
def test_network_over_tls_with_token_management(tmp_path: Path, db_url: str) -> None:
    net = Network(tmp_path, db_url, lease_timeout=3.0, tls=make_tls(tmp_path))
    try:
        net.start_coordinator()
        assert net.coordinator and f"on {net.url}" in net.coordinator.output()
        assert net.tls
        # the CLI with the global --ca-file option (the environment carries no CA here)
        admin_env = {k: v for k, v in net.env.items()}
        admin_env |= {"GPUNET_URL": net.url, "GPUNET_TOKEN": net.admin, "COLUMNS": "200"}
        r = subprocess.run(
            [sys.executable, "-m", "gpunet", "--ca-file", str(net.tls.ca),
             "tokens", "create", "--role", "provider", "--account", "owner",
             "--uses", "1", "--expires", "1h", "--json"],
            env=admin_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        join = json.loads(r.stdout)
        assert join["uses_left"] == 1 and join["expires_at"]

        # without the CA the client refuses the certificate, in one line
        one_line_error(
            subprocess.run(
                [sys.executable, "-m", "gpunet", "nodes"],
                env=admin_env,
                capture_output=True,
                text=True,
                timeout=60,
            ),  # fmt: skip
            "does not trust",
            "--ca-file",
        )

        # `gpunet login` saves URL, token and CA: later commands need none of them
        home_only = {k: v for k, v in net.env.items()} | {"COLUMNS": "200"}
        login = subprocess.run(
            [sys.executable, "-m", "gpunet", "login", "--url", net.url,
             "--token", net.admin, "--ca-file", str(net.tls.ca)],
            env=home_only, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert login.returncode == 0 and "logged in" in login.stdout, login.stderr
        saved = subprocess.run(
            [sys.executable, "-m", "gpunet", "tokens", "list", "--json"],
            env=home_only, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert saved.returncode == 0, saved.stderr
        assert join["id"] in {t["id"] for t in json.loads(saved.stdout)}

        net.start_agent("a1", "1xA100-80GB", join["token"])
        wait_for(
            lambda: [n for n in net.cli_json(net.admin, "nodes") if n["status"] == "online"],
            30,
            "a1 online over https",
        )
        # the join token had one use: a second agent is refused and says why
        second = net.start_agent("a2", "1xA100-80GB", join["token"])
        assert second.p.wait(timeout=30) == 1
        out = second.output()
        assert "the coordinator refused this agent: join token used up" in out, out
        assert "Traceback" not in out
        listed = {t["id"]: t for t in net.cli_json(net.admin, "tokens", "list")}
        assert listed[join["id"]]["uses_left"] == 0 and listed[join["id"]]["state"] == "used up"
        assert all("token" not in t for t in listed.values())

        # a job end to end through the CLI, over https
        user = net.cli_json(net.admin, "tokens", "create", "--role", "consumer", "--account", "u")
        ran = net.cli(user["token"], "run", "--gpus", "1", "--", "python3", "-c", "print('tls ok')")
        assert ran.returncode == 0 and "tls ok" in ran.stdout, ran.stdout + ran.stderr

        # accounts: unknown ones say how to create them; created ones can take credits
        one_line_error(
            net.cli(net.admin, "credits", "grant", "--account", "carol", "10"),
            "no account 'carol'",
            "gpunet accounts create carol",
        )
        assert net.cli(net.admin, "accounts", "create", "carol").returncode == 0
        assert net.cli(net.admin, "credits", "grant", "--account", "carol", "10").returncode == 0
        accounts = {a["name"]: a for a in net.cli_json(net.admin, "accounts")}
        assert accounts["owner"]["nodes"] == 1 and accounts["carol"]["roles"] == []
        assert accounts["u"]["roles"] == ["consumer"]

        # revocation holds from the next request, through the CLI
        assert net.cli(user["token"], "jobs").returncode == 0
        assert net.cli(net.admin, "tokens", "revoke", user["id"]).returncode == 0
        one_line_error(net.cli(user["token"], "jobs"), "token revoked at")

        # revoking the node's own token: its heartbeats are refused and it goes offline
        agent_tok = next(t for t in listed.values() if t["role"] == "agent")
        assert net.cli(net.admin, "tokens", "revoke", agent_tok["id"]).returncode == 0
        wait_for(
            lambda: all(n["status"] == "offline" for n in net.cli_json(net.admin, "nodes")),
            20,
            "the node with a revoked token to go offline",
        )
        assert "heartbeat failed: 401" in net.agents["a1"].output()
    except BaseException:
        print(net.logs())
        raise
    finally:
        net.close()


def _server(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_")}
    env["GPUNET_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-m", "gpunet", "server", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_server_refuses_plain_http_off_loopback_and_half_tls(tmp_path: Path) -> None:
    one_line_error(
        _server(tmp_path, "--host", "0.0.0.0", "--port", "1"),
        "refusing plain http on 0.0.0.0",
        "--tls-cert",
    )
    tls = make_tls(tmp_path)
    one_line_error(
        _server(tmp_path, "--tls-cert", str(tls.cert), "--port", "1"), "tls_key", "go together"
    )
    # a key that does not belong to the certificate is named before anything starts
    (tmp_path / "other").mkdir()
    other = make_tls(tmp_path / "other")
    one_line_error(
        _server(tmp_path, "--tls-cert", str(tls.cert), "--tls-key", str(other.key)),
        "tls_cert: cannot load",
    )
