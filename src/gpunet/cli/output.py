"""Console output: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gpunet.cli import formats

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

M = TypeVar("M")
Column = tuple[str, Callable[[M], Any]]


# the --json option every listing takes
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_ids(ids: Iterable[str]) -> None:
    """``--quiet``: one id a line, for ``$(...)`` in a shell."""
    for i in ids:
        print(i)


# a column of a table of dicts: (key, header), or (key, header, how its value is written)
DictColumn = tuple[str, str] | tuple[str, str, Callable[[Any], str]]


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[DictColumn], title: str | None = None
) -> None:
    """A table of dicts; a column's third element, when given, formats its values (see
    ``gpunet.cli.formats``)."""
    _print_table(
        [c[1] for c in columns],
        [[c[2](r.get(c[0])) if len(c) == 3 else r.get(c[0]) for c in columns] for r in rows],
        title,
    )


def model_table(rows: Sequence[M], columns: Sequence[Column[M]], title: str | None = None) -> None:
    """A table of typed answers: each column is (header, what it shows of a row), so the type
    checker sees every field a table reads."""
    _print_table(
        [header for header, _ in columns], [[get(r) for _, get in columns] for r in rows], title
    )


def _print_table(headers: Sequence[str], cells: Sequence[Sequence[Any]], title: str | None) -> None:
    t = Table(title=title, show_lines=False, header_style="bold")
    for header in headers:
        t.add_column(header)
    for row in cells:
        t.add_row(*(fmt(v) for v in row))
    console.print(t)


def fmt(v: Any) -> str:
    """A cell or value nobody formatted on purpose: a float to one decimal place, a list as
    ``a, b``, an ISO timestamp in local time with its zone (the rules of ``formats``)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return formats.number(v, 1)
    if isinstance(v, Decimal):  # the wire's decimals are amounts of credits
        return formats.credits(v)
    if isinstance(v, list | tuple):
        return formats.items(v)
    if isinstance(v, datetime):
        return formats.when(v)
    s = str(v)
    if formats.looks_like_time(s):
        return formats.when(s)
    return s


STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "white",
    "assigned": "blue",
    "lost": "magenta",
}


def styled_state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"
