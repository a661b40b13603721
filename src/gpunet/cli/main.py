"""The ``gpunet`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.markup import escape

from gpunet import __version__
from gpunet.cli import (
    access,
    fleet,
    formats,
    gpus,
    jobs,
    market,
    report,
    serve,
    services,
    sim,
    status,
)
from gpunet.cli.output import err_console
from gpunet.errors import GpunetError

app = typer.Typer(
    help="gpunet: pool GPUs from many owners and run AI work on the best fit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

app.command()(serve.up)
app.command()(serve.demo)
app.command()(serve.server)
app.command()(serve.agent)
app.command()(status.status)
app.command()(jobs.submit)
app.command(context_settings={"allow_interspersed_args": False})(jobs.run)
app.add_typer(jobs.jobs_app, name="jobs")
app.command()(jobs.logs)
app.command()(jobs.cancel)
app.command()(fleet.nodes)
app.add_typer(gpus.gpus_app, name="gpus")
app.add_typer(services.services_app, name="services")
app.add_typer(access.tokens_app, name="tokens")
app.add_typer(access.accounts_app, name="accounts")
app.command()(access.login)
app.add_typer(sim.app, name="sim")
app.add_typer(market.price_app, name="price")
app.add_typer(market.credits_app, name="credits")
app.add_typer(market.quota_app, name="quota")
app.add_typer(market.ledger_app, name="ledger")
app.command()(market.balance)
app.command()(market.earnings)
app.command()(market.spend)
app.command()(market.offers)
app.command()(market.reputation)
app.add_typer(report.report_app, name="report")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gpunet {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="PEM of the private CA that signed the coordinator's certificate "
            "(also GPUNET_CA_FILE, or saved by `gpunet login`)",
        ),
    ] = None,
    utc: Annotated[
        bool,
        typer.Option(
            "--utc",
            help="print timestamps in UTC instead of local time (also GPUNET_UTC=1)",
        ),
    ] = False,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            help="coordinator URL, or several replicas' URL1,URL2 tried in turn "
            "(also GPUNET_URL; default: the one saved by `gpunet login`)",
        ),
    ] = None,
) -> None:
    if utc:
        os.environ[formats.UTC_ENV] = "1"  # read by every timestamp the commands print
    if coordinator:
        os.environ["GPUNET_URL"] = coordinator
    if ca_file is not None:
        # every command builds its Client from the environment: this reaches them all
        os.environ["GPUNET_CA_FILE"] = str(ca_file.expanduser())


def main() -> None:
    """Entry point: errors are printed as one line, never as a traceback."""
    try:
        rv = app(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except GpunetError as exc:
        # the message is text, not markup: "gpunet[s3]" or "files[0]" must print as written
        err_console.print(f"[red]error:[/] {escape(exc.message)}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
