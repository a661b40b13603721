"""Statements as CSV: an empty one still prints its header, so scripts can read it."""

from __future__ import annotations

import csv
import io

import pytest

from gpunet.cli.market import _csv


def test_an_empty_statement_prints_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    _csv([], ["gpu_id", "hours_sold", "revenue"])
    assert capsys.readouterr().out.strip() == "gpu_id,hours_sold,revenue"


def test_rows_print_under_their_own_fields(capsys: pytest.CaptureFixture[str]) -> None:
    _csv([{"gpu_id": "n/0", "revenue": "1.5"}], ["gpu_id"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows == [{"gpu_id": "n/0", "revenue": "1.5"}]
