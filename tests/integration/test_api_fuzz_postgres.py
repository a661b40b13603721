"""The API fuzz (fuzzing.py) on PostgreSQL, where over-long strings and integer overflows
surface."""

from __future__ import annotations

import pytest
from fuzzing import fuzz_app


@pytest.mark.postgres
def test_fuzz_postgres(pg_url: str) -> None:
    fuzz_app(pg_url)
