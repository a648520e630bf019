"""What a hostile or careless client can make a running `bentoml serve` do: the front worker's peak memory under
three concurrent 250 MiB chunked uploads, the time and memory of a decompression bomb, and the 8-client load
(p50/p99, requests/s) to show that the hardening made nothing slower.

    python benchmarks/hardening_bench.py --json benchmarks/results-hardening-cpu.json

Run it on two checkouts (before and after a change) on one machine, one after the other: it starts its own server
on a loopback port with the store's `models/` (the demo model) and the service's default limits. Peak memory is
the kernel's high-water mark of the front worker (VmHWM, reset through /proc/PID/clear_refs before each case), so
no short peak between two samples is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.export_bench import machine  # noqa: E402
from benchmarks.serve_bench import cases, run_load  # noqa: E402
from testing.local_server import peak_memory_mib, reset_peak_memory, serve  # noqa: E402
from tests.dicomfiles import blank_jpeg2000, ct_hu, ct_image, repeated_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
BOUNDARY = "medsamix-bench-boundary"


def chunked_upload(path: Path, prompts: list[dict], chunk: int = MIB) -> Iterator[bytes]:
    """A multipart/form-data body (the DICOM file, then the prompts) yielded in chunks: httpx sends it chunked."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="ct.dcm"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block
    yield (
        f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompts"\r\n\r\n{json.dumps(prompts)}\r\n'
        f"--{BOUNDARY}--\r\n"
    ).encode()


def concurrent_uploads(url: str, front: psutil.Process, path: Path, clients: int) -> dict:
    """`clients` simultaneous chunked uploads of `path`: statuses, wall time, the front worker's peak RSS."""
    reset_peak_memory(front)
    before = front.memory_info().rss / MIB
    statuses: list[int] = []
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}

    def one() -> None:
        body = chunked_upload(path, [{"box": [64, 64, 320, 300], "frame": 0}])
        response = httpx.post(url + "/segment", content=body, headers=headers, timeout=600)
        statuses.append(response.status_code)

    started = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "case": f"{clients} concurrent chunked uploads of {path.stat().st_size / MIB:.0f} MiB",
        "statuses": sorted(statuses),
        "seconds": time.perf_counter() - started,
        "front_rss_before_mib": before,
        "front_peak_mib": peak_memory_mib(front),
    }


def bomb_case(url: str, front: psutil.Process, data: bytes, frames: int) -> dict:
    reset_peak_memory(front)
    before = front.memory_info().rss / MIB
    prompts = [{"box": [100, 100, 5000, 5000], "frame": i} for i in range(frames)]
    started = time.perf_counter()
    response = httpx.post(
        url + "/segment",
        files={"file": ("bomb.dcm", data, "application/dicom")},
        data={"prompts": json.dumps(prompts)},
        timeout=600,
    )
    return {
        "case": f"JPEG 2000 bomb, {frames} frame(s) of 7000x7000 in {len(data)} bytes",
        "statuses": [response.status_code],
        "seconds": time.perf_counter() - started,
        "front_rss_before_mib": before,
        "front_peak_mib": peak_memory_mib(front),
        "answer": response.text[:200] if response.status_code != 200 else "masks",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-mib", type=int, default=250)
    parser.add_argument("--clients", type=int, default=8, help="clients of the load cases")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load case")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label", default="this checkout", help="names the run in the table (e.g. before/after)")
    args = parser.parse_args()

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "big.dcm"
        upload.write_bytes(repeated_frames(args.upload_mib * MIB // (512 * 512 * 2), seed=7))
        env = {"MEDSAMIX_MODELS": str(REPO / "models"), "MEDSAMIX_MAX_LATENCY_MS": "20"}

        def fresh(name: str):  # each case on a new server: no case inherits another's memory
            return serve(env, Path(tmp) / f"serve-{name}.log")

        with fresh("uploads") as server:
            rows.append(concurrent_uploads(server.url, server.worker(), upload, 3))
            print(json.dumps(rows[-1]), flush=True)
        for frames in (1, 4):
            with fresh(f"bomb-{frames}") as server:
                rows.append(bomb_case(server.url, server.worker(), blank_jpeg2000(frames, 7000), frames))
                print(json.dumps(rows[-1]), flush=True)
        image = ct_image(ct_hu(512, 512, seed=3))
        with fresh("load") as server:
            for name, request in cases(image, 512, np.random.default_rng(0)):
                with httpx.Client(base_url=server.url, timeout=600) as http:
                    request(http, -1)
                result = run_load(server, args.clients, args.duration, request)
                rows.append({"case": f"load: {name}", "clients": args.clients, **result})
                print(json.dumps(rows[-1]), flush=True)
    report = {"date": date.today().isoformat(), "machine": machine(), "label": args.label, "rows": rows}
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def table(report: dict) -> str:
    lines = [f"### hardening_bench ({report['label']}), {report['date']}, {report['machine']}", ""]
    for r in report["rows"]:
        if "front_peak_mib" in r:
            lines.append(
                f"- {r['case']}: HTTP {r['statuses']}, {r['seconds']:.1f} s, "
                f"front worker peak {r['front_peak_mib']:.0f} MiB"
            )
        else:
            lines.append(
                f"- {r['case']}, {r['clients']} clients: {r['requests']} requests, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms, {r['rps']:.1f} requests/s"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    main()
