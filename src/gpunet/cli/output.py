"""Console output: Rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

M = TypeVar("M")
Column = tuple[str, Callable[[M], Any]]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str | None = None
) -> None:
    _print_table(
        [header for _, header in columns], [[r.get(key) for key, _ in columns] for r in rows], title
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
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}"
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "-"
    s = str(v)
    # ISO timestamps: seconds are enough in a table
    if len(s) > 19 and s[4:5] == "-" and s[10:11] == "T":
        return s[:19].replace("T", " ")
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
