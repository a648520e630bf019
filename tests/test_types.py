"""Types: mypy over search/ and service/ as pyproject's [tool.mypy] configures it reports no error.

mypy runs in a subprocess from the repository root, so it reads that configuration and checks this checkout's
packages. On a cold cache (no .mypy_cache/) it takes about 35 s on two shared CPU cores, about 6 s once the cache
is warm; the cache is .mypy_cache/ in the repository root (ignored by git).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_reports_no_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, f"mypy exited with {run.returncode}:\n{run.stdout}{run.stderr}"
