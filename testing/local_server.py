"""`bentoml serve` as a subprocess on a free loopback port: how the tests, the load benchmark and the Orthanc
round-trip talk to a real server, exactly as a user would start it.

Each server gets a BentoML home of its own (unless `env` names one): BentoML keeps its Prometheus multiprocess
files there, and a second server sharing the home wipes the first one's counters at start and then shows another
server's numbers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

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

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def worker(self, service: str = "medsamix") -> psutil.Process:
        """The worker process of `service` ('medsamix': the API front; 'medsamix-encoder': the encoders)."""
        for child in psutil.Process(self.pid).children(recursive=True):
            command = child.cmdline()
            if "--service-name" in command and command[command.index("--service-name") + 1] == service:
                return child
        raise LookupError(f"the server has no worker for the service {service}")


def reset_peak_memory(process: psutil.Process) -> None:
    """Reset `process`'s resident-memory high-water mark (VmHWM) to its current resident memory (Linux)."""
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")


def peak_memory_mib(process: psutil.Process) -> float:
    """`process`'s resident-memory high-water mark (VmHWM) in MiB: no short peak between two samples is missed."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError("the kernel reports no VmHWM for the process")


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@contextmanager
def serve(
    env: Mapping[str, str],
    log: Path,
    timeout: float = 180.0,
    ready: bool = True,
    target: str = ENTRY,
    cwd: Path = ROOT,
) -> Iterator[LocalServer]:
    """A server with `env` (MEDSAMIX_* settings) on 127.0.0.1, its output in `log`; waits until /readyz answers
    200 (or, with `ready=False`, until /livez does), and stops the whole process group on exit. `target` is what
    `bentoml serve` is given, run in `cwd`: the service of this checkout, or a built Bento's folder (as the image
    `bentoml containerize` makes serves it)."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    home = None if "BENTOML_HOME" in env else tempfile.mkdtemp(prefix="medsamix-bentoml-home-")
    environment = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **({"BENTOML_HOME": home} if home else {}), **env}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
