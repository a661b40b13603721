"""Who may use the network: tokens, accounts, and the client's saved connection (login)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gpunet.cli import formats
from gpunet.cli.output import DictColumn, JsonOpt, console, print_json, table
from gpunet.config import ClientConfig
from gpunet.sdk.client import Client

tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
accounts_app = typer.Typer(
    help="Accounts: who tokens act for, who pays and who earns (list without a command).",
    invoke_without_command=True,
)


TOKEN_COLUMNS: list[DictColumn] = [
    ("id", "ID"),
    ("role", "ROLE"),
    ("account", "ACCOUNT"),
    ("name", "NAME"),
    ("state", "STATE"),
    ("created_at", "CREATED", formats.when),
    ("expires_at", "EXPIRES", formats.when),
    ("uses_left", "USES LEFT"),
    ("last_used_at", "LAST USED", formats.when),
    ("revoked_at", "REVOKED", formats.when),
]


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="consumer | provider | admin")],
    account: Annotated[str, typer.Option(help="account the token acts for")] = "default",
    name: Annotated[str, typer.Option(help="a label for the token")] = "",
    expires: Annotated[
        str | None, typer.Option(help="lifetime, e.g. 90m, 12h, 30d (default: never)")
    ] = None,
    uses: Annotated[
        int | None, typer.Option(help="join tokens: how many agents it may register")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a token (admin); its secret is printed only this once. Provider tokens are join
    tokens for agents. A new account is created with its first token."""
    with Client() as client:
        res = client.new_token(role, account, name, expires=expires, uses=uses)
    if json_out:
        print_json(res)
    else:
        console.print(res["token"])


@tokens_app.command("list")
def tokens_list(
    account: Annotated[str | None, typer.Option(help="only this account's tokens")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Tokens without their secrets: every one (admin) or your account's."""
    with Client() as client:
        rows = client.tokens(account)
    if json_out:
        print_json(rows)
    else:
        table(rows, TOKEN_COLUMNS)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (from `gpunet tokens list`)")],
    json_out: JsonOpt = False,
) -> None:
    """Revoke a token (admin: any; others: their account's). It is refused from the next
    request on; revoking a node's agent token disconnects that agent."""
    with Client() as client:
        res = client.revoke_token(token_id)
    if json_out:
        print_json(res)
    else:
        console.print(f"revoked {res['id']} ({res['role']}, account {res['account']})")


@accounts_app.callback()
def accounts(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Accounts with the roles of their live tokens, their nodes and when they were created."""
    if ctx.invoked_subcommand is not None:
        return
    with Client() as client:
        rows: list[dict[str, Any]] = client.accounts()
    if json_out:
        print_json(rows)
        return
    table(
        rows,
        [
            ("name", "ACCOUNT"),
            ("id", "ID"),
            ("roles", "ROLES", formats.items),
            ("tokens", "LIVE TOKENS"),
            ("nodes", "NODES"),
            ("created_at", "CREATED", formats.when),
        ],
    )


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="the account's name")],
    json_out: JsonOpt = False,
) -> None:
    """Create an account before it has a token (admin), e.g. to grant it credits."""
    with Client() as client:
        res = client.create_account(name)
    if json_out:
        print_json(res)
    else:
        console.print(f"created account {res['name']} ({res['id']})")


def login(
    url: Annotated[str, typer.Option(help="the coordinator, e.g. https://coord:8787")],
    token: Annotated[str, typer.Option(help="your API token", envvar="GPUNET_TOKEN")],
    ca_file: Annotated[
        Path | None,
        typer.Option(help="PEM of the private CA that signed the coordinator's certificate"),
    ] = None,
) -> None:
    """Check a coordinator and token, and save them (and the CA) as this user's defaults."""
    ca = str(ca_file.expanduser().resolve()) if ca_file else None
    with Client(url, token, ca_file=ca) as client:
        me = client.whoami()
    path = ClientConfig(url.rstrip("/"), token, ca).save()
    acct = me.get("account") or me["account_id"]
    console.print(f"logged in to {url} as {me['role']} (account {acct}); saved {path}")
