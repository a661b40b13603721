"""The API fuzz (fuzzing.py) on SQLite."""

from __future__ import annotations

from pathlib import Path

from fuzzing import fuzz_app


def test_fuzz_sqlite(tmp_path: Path) -> None:
    fuzz_app(f"sqlite:///{tmp_path / 'gpunet.db'}")
