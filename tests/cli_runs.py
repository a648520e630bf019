"""Running the `medsamix` CLI as a user does (a subprocess), reading its one-line errors, and writing the search
configs over the tests' zoo that its commands read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from search.zoo import search_config
from tests.conftest import ZOO


def medsamix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def tasks_file(folder: Path, tasks: list[str]) -> Path:
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(search_config(ZOO.resolve(), tasks)))
    return path


def write_config(folder: Path, tasks: list[str], **settings) -> Path:
    data = search_config(ZOO.resolve(), tasks, **{"output": str(folder / "run"), **settings})
    path = folder / "search.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
