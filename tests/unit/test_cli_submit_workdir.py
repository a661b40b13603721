"""`gpunet submit FILE` uploads the YAML's folder when the command names a file there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpunet.cli.jobs import files_referred


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["python3", "train.py"], ["train.py"]),
        ("python3 train.py --epochs 3", ["train.py"]),
        ("bash run.sh train.py", ["run.sh", "train.py"]),
        (["python3", "-c", "print('hi')"], []),
        (["python3", "missing.py"], []),
        (["python3", "data"], []),  # a folder is no file to run
        (["python3", "--config=train.py"], []),
        ("python3 'unbalanced", []),
        ([], []),
    ],
)
def test_files_referred(tmp_path: Path, command: Any, expected: list[str]) -> None:
    (tmp_path / "train.py").write_text("print('x')\n")
    (tmp_path / "run.sh").write_text("true\n")
    (tmp_path / "data").mkdir()
    assert files_referred({"command": command}, tmp_path) == expected


def test_an_absolute_path_is_not_the_folder(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("")
    assert files_referred({"command": ["python3", str(tmp_path / "train.py")]}, tmp_path) == []


def test_submit_says_it_uploads_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from gpunet.cli import jobs
    from gpunet.cli.main import app

    sent: dict[str, Any] = {}

    class FakeClient:
        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def submit(self, spec: dict[str, Any], workdir: Path | None = None) -> dict[str, Any]:
            sent["workdir"] = workdir
            return {"id": "job-1", "name": spec["name"], "state": "queued"}

    monkeypatch.setattr(jobs, "Client", FakeClient)
    (tmp_path / "train.py").write_text("")
    (tmp_path / "job.yaml").write_text("name: t\ncommand: [python3, train.py]\n")
    r = CliRunner().invoke(app, ["submit", str(tmp_path / "job.yaml")])
    assert r.exit_code == 0, r.output
    assert sent["workdir"] == tmp_path
    assert "uploading the folder of job.yaml as the working directory" in r.output
    # --workdir chooses another, silently
    r = CliRunner().invoke(app, ["submit", str(tmp_path / "job.yaml"), "--workdir", "/tmp"])
    assert r.exit_code == 0 and sent["workdir"] == Path("/tmp")
    assert "uploading the folder" not in r.output
