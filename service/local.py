"""`bentoml serve` as a subprocess on a free loopback port: how the tests, the load benchmark and the Orthanc
round-trip talk to a real server, exactly as a user would start it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENTRY = "service.service:MedSAMix"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LocalServer:
    url: str
    log: Path
    pid: int


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@contextmanager
def serve(env: Mapping[str, str], log: Path, timeout: float = 180.0, ready: bool = True) -> Iterator[LocalServer]:
    """A server with `env` (MEDSAMIX_* settings) on 127.0.0.1, its output in `log`; waits until /readyz answers
    200 (or, with `ready=False`, until /livez does), and stops the whole process group on exit."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", ENTRY, "--host", "127.0.0.1", "--port", str(port)]
    environment = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        probe = f"{url}/readyz" if ready else f"{url}/livez"
        deadline = time.monotonic() + timeout
        while _status(probe) != 200:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bentoml serve was not ready after {timeout:.0f} s; see {log}")
            time.sleep(0.25)
        yield LocalServer(url, log, process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
