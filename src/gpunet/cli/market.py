"""Market commands: price, credits, balance, quota, ledger verify, earnings, spend."""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Any

import typer

from gpunet.cli import formats
from gpunet.cli.output import Column, DictColumn, JsonOpt, console, model_table, print_json, table
from gpunet.errors import ValidationFailed
from gpunet.sdk.client import Client
from gpunet.wire import resources as R

price_app = typer.Typer(help="Price your GPUs (credits per GPU-hour).", no_args_is_help=True)
credits_app = typer.Typer(help="Grant credits to accounts (admin).", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
quota_app = typer.Typer(help="Per-account budgets and quotas (admin).", no_args_is_help=True)

CsvOpt = Annotated[bool, typer.Option("--csv", help="print CSV for spreadsheets")]
AccountOpt = Annotated[
    str | None, typer.Option("--account", help="another account's statement (admin)")
]


@price_app.command("set")
def price_set(
    price: Annotated[str, typer.Argument(help="credits per GPU-hour, or 'free'")],
    gpu: Annotated[str | None, typer.Option("--gpu", help="a GPU id (node/index)")] = None,
    node: Annotated[str | None, typer.Option("--node", help="every GPU of a node")] = None,
    min_interruptible: Annotated[
        str | None, typer.Option("--min-interruptible", help="floor for interruptible work")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Set the on-demand price of a GPU or of every GPU of a node."""
    with Client() as client:
        rows = client.set_price(
            None if price.lower() == "free" else price,
            gpu_id=gpu,
            node_id=node,
            min_interruptible=min_interruptible,
        )
    if json_out:
        print_json(rows)
        return
    table(
        rows,
        [
            ("gpu_id", "GPU"),
            ("model", "MODEL"),
            ("price_per_hour", "PRICE", formats.per_hour),
            ("min_interruptible_price", "MIN INTERRUPTIBLE", formats.per_hour),
        ],
    )


@price_app.command("suggest")
def price_suggest(
    gpu: Annotated[str, typer.Option("--gpu", help="a GPU id (node/index)")],
    tier: Annotated[str | None, typer.Option(help="training | inference | secondary")] = None,
    json_out: JsonOpt = False,
) -> None:
    """A suggested price from public market prices, never below the energy cost."""
    with Client() as client:
        res = client.suggest_price(gpu, tier)
    if json_out:
        print_json(res)
        return
    console.print(f"{res['gpu_id']} ({res['model']}): {formats.per_hour(res['suggested_price'])}")
    console.print(
        f"  {res['explanation']}; energy cost {formats.per_hour(res['energy_cost_per_hour'])}"
    )


@credits_app.command("grant")
def credits_grant(
    amount: Annotated[str, typer.Argument(help="credits, e.g. 100 or 12.5")],
    account: Annotated[str, typer.Option("--account", help="the account to credit")],
    memo: Annotated[str, typer.Option(help="a note kept with the grant")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Grant credits to an account."""
    with Client() as client:
        res = client.grant(account, amount, memo)
    if json_out:
        print_json(res)
    else:
        console.print(f"{account}: balance {formats.credits(res['balance'])}")


def balance(account: AccountOpt = None, json_out: JsonOpt = False) -> None:
    """Your credits: spendable balance and what running attempts hold."""
    with Client() as client:
        if json_out:
            print_json(client.balance(account))
            return
        res = client.balance_model(account)
    console.print(
        f"{res.account}: balance {formats.credits(res.balance)}, held {formats.credits(res.held)}"
    )
    if res.max_concurrent_gpus is not None or res.monthly_spend is not None:
        monthly = "no cap on" if res.monthly_spend is None else formats.credits(res.monthly_spend)
        console.print(
            f"  quota: {res.max_concurrent_gpus or 'any'} GPUs at once, {monthly} spend per month"
        )


@quota_app.command("set")
def quota_set(
    account: Annotated[str, typer.Option("--account", help="the account to cap")],
    gpus: Annotated[int | None, typer.Option("--gpus", help="max concurrent GPUs")] = None,
    monthly: Annotated[str | None, typer.Option("--monthly", help="max spend per month")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Cap an account's concurrent GPUs and monthly spend (omit an option: no cap)."""
    with Client() as client:
        res = client.set_quota(account, gpus, monthly)
    if json_out:
        print_json(res)
    else:
        cap = "no cap" if monthly is None else formats.credits(monthly)
        console.print(f"{account}: {gpus or 'any'} GPUs at once, {cap} a month")


@ledger_app.command("verify")
def ledger_verify(json_out: JsonOpt = False) -> None:
    """Check every ledger invariant; name each violation (exit 1 if any)."""
    with Client() as client:
        res = client.verify_ledger()
    if json_out:
        print_json(res)
    elif res["ok"]:
        console.print("ledger ok: every transaction balances, no balance is negative")
    else:
        for p in res["problems"]:
            console.print(f"[red]violation:[/] {p}")
    if not res["ok"]:
        raise typer.Exit(1)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rows as CSV; an empty statement still prints its header."""
    w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else columns)
    w.writeheader()
    w.writerows(rows)


def _one_format(json_out: bool, csv_out: bool) -> None:
    if json_out and csv_out:
        raise ValidationFailed("format", "choose one of --json and --csv")


def _statement(
    res: dict[str, Any],
    rows_key: str,
    columns: list[DictColumn],
    title: str,
    json_out: bool,
    csv_out: bool,
) -> None:
    """Print a statement as JSON, as CSV of its rows, or as a table."""
    if json_out:
        print_json(res)
    elif csv_out:
        _csv(res[rows_key], [c[0] for c in columns])
    else:
        table(res[rows_key], columns, title=title)


def earnings(
    account: AccountOpt = None, json_out: JsonOpt = False, csv_out: CsvOpt = False
) -> None:
    """What your GPUs earned: hours sold, revenue, energy cost and margin per GPU."""
    _one_format(json_out, csv_out)
    with Client() as client:
        res = client.earnings(account)
    columns: list[DictColumn] = [
        ("gpu_id", "GPU"),
        ("hours_sold", "SOLD", formats.hours),
        ("revenue", "REVENUE", formats.credits),
        ("energy_cost", "ENERGY COST", formats.credits),
        ("margin", "MARGIN", formats.credits),
    ]
    title = f"earnings of {res['account']}: {formats.credits(res['total_revenue'])}"
    _statement(res, "gpus", columns, title, json_out, csv_out)


def spend(account: AccountOpt = None, json_out: JsonOpt = False, csv_out: CsvOpt = False) -> None:
    """What your jobs cost: GPU-seconds and credits per job, and refunded attempts."""
    _one_format(json_out, csv_out)
    with Client() as client:
        res = client.spend(account)
    columns: list[DictColumn] = [
        ("job_id", "JOB"),
        ("attempts", "ATTEMPTS"),
        ("refunded_attempts", "REFUNDED"),
        ("gpu_seconds", "GPU TIME", formats.duration),
        ("charged", "CHARGED", formats.credits),
    ]
    title = (
        f"spend of {res['account']}: {formats.credits(res['total_charged'])} "
        f"(balance {formats.credits(res['balance'])}, held {formats.credits(res['held'])})"
    )
    _statement(res, "jobs", columns, title, json_out, csv_out)


def offers(
    query: Annotated[
        list[str] | None,
        typer.Argument(
            help="terms FIELD OP VALUE, e.g. gpu=A100-80GB memory>=40 price<=1.5 "
            "reliability>=0.95 site=eu-west tier=training isolation>=sandbox runtime=podman "
            "owner=alice owner_busy=no (fields: gpu memory price reliability site tier state "
            "available owner_busy node cc simulated isolation runtime owner; "
            "ops: = != >= <= > <)"
        ),
    ] = None,
    sort: Annotated[
        str | None, typer.Option("--sort", help="a field; -FIELD sorts high to low")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """GPUs on the market from every owner, with price and the node's reliability."""
    q = " ".join(query or []) or None
    with Client() as client:
        if json_out:
            print_json(client.offers(q, sort))
            return
        rows = client.offer_models(q, sort)
    model_table(rows, OFFER_COLUMNS, title=f"{len(rows)} offer(s)")


OFFER_COLUMNS: list[Column[R.Offer]] = [
    ("GPU", lambda o: o.gpu_id),
    ("MODEL", lambda o: o.model),
    ("MEMORY", lambda o: formats.gb(o.memory_gb)),
    ("PRICE", lambda o: formats.per_hour(o.price_per_hour)),
    ("RELIABILITY", lambda o: formats.fraction(o.reliability)),
    ("TIER", lambda o: o.tier),
    ("SITE", lambda o: o.site),
    ("OWNER", lambda o: o.owner),
    ("ISOLATION", lambda o: o.isolation),
    ("RUNTIMES", lambda o: formats.items(o.runtimes)),
    ("STATE", lambda o: o.state),
]


def reputation(
    node: Annotated[str, typer.Argument(help="a node id")], json_out: JsonOpt = False
) -> None:
    """A node's reputation score and what it is made of."""
    with Client() as client:
        res = client.reputation(node)
    if json_out:
        print_json(res)
        return
    console.print(f"node {res['node_id']}: reputation {formats.fraction(res['score'])}")
    table(
        res["components"],
        [
            ("name", "COMPONENT"),
            ("value", "VALUE", formats.fraction),
            ("weight", "WEIGHT", formats.fraction),
            ("explanation", "WHY"),
        ],
    )
