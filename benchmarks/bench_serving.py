"""Load test of `embedlab serve` on loopback: concurrent clients posting images to /search.

The server runs as its own process (`embedlab serve`, bound to 127.0.0.1 on a free port), exactly as a
user starts it. Without --index the benchmark first makes a small deployment in a temporary folder: a
generated gallery (one flat colour with noise per identity), a small_cnn run trained for a few steps,
and its index. The client is one asyncio process whose --clients tasks each post a query image to
/search in a loop, one request at a time, with keep-alive connections, until --seconds have passed or
--max-requests have been sent; then the server is stopped. Traffic goes to 127.0.0.1 only. The
client speaks HTTP/1.1 over raw asyncio streams with the request built once, so that the load
generator, which shares the machine's cores with the server, costs little (an httpx client was the
bottleneck at 50 connections).

Printed: requests, requests per second, latency p50 / p90 / p95 / p99 / max (from sending the request
to reading the whole response), errors (any status but 200, or a transport error), the server's RSS
(VmRSS from /proc/PID/status) before the load (after the warm-up) and after it, with its peak during
the load (VmHWM, reset before the load where Linux allows it), and the machine.
Client and server share the machine's cores, so the figures are a lower bound for the server alone.

Usage:
    python benchmarks/bench_serving.py                          # 50 clients for 30 s on a demo index
    python benchmarks/bench_serving.py --index runs/whales-index --query photo.jpg
    python benchmarks/bench_serving.py --clients 4 --seconds 3  # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

EMBEDLAB = shutil.which("embedlab", path=str(Path(sys.executable).parent)) or "embedlab"
#: A hard bound on one request, so a stuck server cannot hold the benchmark past its time.
REQUEST_TIMEOUT_S = 30.0
WARM_UP_REQUESTS = 10


def make_demo_index(folder: Path, identities: int, per_identity: int, image_size: int) -> tuple[Path, Path]:
    """Generate a gallery, train a small_cnn run for a few steps, index the gallery; returns
    (index folder, a query image)."""
    from embedlab.config import load_config
    from embedlab.pipelines.index import build_gallery_index
    from embedlab.training.fit import fit

    rng = np.random.default_rng(0)
    gallery = folder / "gallery"
    for identity in range(identities):
        colour = rng.integers(0, 256, 3)
        (gallery / f"id_{identity:03d}").mkdir(parents=True)
        for n in range(per_identity):
            pixels = np.clip(colour + rng.normal(0, 12, (image_size, image_size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(gallery / f"id_{identity:03d}" / f"{n}.png")
    cfg, _ = load_config(
        None,
        [
            f"data.dataset={gallery}",
            f"data.image_size={image_size}",
            "data.validation.split=classes",
            "train.epochs=1",
            "train.batch_size=32",
            "train.max_steps_per_epoch=5",
            "model.embedding_dim=128",
            "loss={name: ContrastiveLoss}",
        ],
    )
    fit(cfg, folder / "run", progress=False)
    build_gallery_index(folder / "run", [gallery], folder / "index", progress=False)
    return folder / "index", gallery / "id_000" / "0.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(index_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as stream:
        server = subprocess.Popen(
            [EMBEDLAB, "serve", str(index_dir), "--host", "127.0.0.1", "--port", str(port)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.3)
    server.terminate()
    raise RuntimeError(f"the server did not answer within 180 s:\n{log.read_text()}")


def search_request(port: int, image: bytes) -> bytes:
    """The whole HTTP/1.1 request, built once: POST /search, multipart with the image as `file`."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="query.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bool]:
    """Send one request and read its whole response: (status, whether the server keeps the connection)."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers.get("connection") != "close"


async def load(
    port: int,
    image: bytes,
    clients: int,
    seconds: float,
    max_requests: int,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the clients; returns latencies (s) of successful requests, errors and the duration.
    `on_start` is called after the warm-up, just before the clients start.

    Each client is a keep-alive connection sending one request after another. The client is raw
    asyncio streams with the request prepared once, so that on a machine shared with the server the
    load generator costs a few microseconds per request and the figures are the server's.
    """
    request = search_request(port, image)
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0

    async def one_client(deadline: float, budget: int) -> None:
        nonlocal sent
        connection = None
        while time.perf_counter() < deadline and sent < budget:
            sent += 1
            begin = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", port)
                status, keep = await asyncio.wait_for(exchange(*connection, request), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                connection = None
                continue
            if status == 200:
                latencies.append(time.perf_counter() - begin)
            else:
                errors.append(f"status {status}")
            if not keep:
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    await one_client(time.perf_counter() + 60, WARM_UP_REQUESTS)  # the first forward passes are slow
    latencies.clear()
    errors.clear()
    sent = 0
    if on_start is not None:
        on_start()
    started = time.perf_counter()
    await asyncio.gather(*(one_client(started + seconds, max_requests) for _ in range(clients)))
    return {"latencies": latencies, "errors": errors, "duration": time.perf_counter() - started}


def memory_mib(pid: int) -> dict[str, float | None]:
    """The process's VmRSS (resident now) and VmHWM (its peak), MiB; None where /proc has no such file."""
    status = Path(f"/proc/{pid}/status")
    found: dict[str, float | None] = {"VmRSS": None, "VmHWM": None}
    if status.is_file():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in found:
                found[key] = round(int(value.split()[0]) / 1024, 1)
    return found


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0; ignored where not allowed)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def machine() -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", type=Path, help="an existing index folder (default: build a demo one)")
    parser.add_argument("--query", type=Path, help="the query image (default: a gallery image of the demo)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--identities", type=int, default=100, help="demo gallery: identities")
    parser.add_argument("--per-identity", type=int, default=10, help="demo gallery: images per identity")
    parser.add_argument("--image-size", type=int, default=64, help="demo gallery: image side in pixels")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        folder = Path(scratch)
        if args.index is None:
            index_dir, demo_query = make_demo_index(
                folder, args.identities, args.per_identity, args.image_size
            )
        elif args.query is None:
            parser.error("--index needs --query")
        else:
            index_dir = args.index
        image = (args.query or demo_query).read_bytes()
        port = free_port()
        server = start_server(index_dir, port, folder / "server.log")
        memory: dict[str, float | None] = {}

        def before_load() -> None:
            reset_peak(server.pid)
            memory["before"] = memory_mib(server.pid)["VmRSS"]

        try:
            result = asyncio.run(
                load(port, image, args.clients, args.seconds, args.max_requests, on_start=before_load)
            )
            after = memory_mib(server.pid)
            memory.update(after=after["VmRSS"], peak=after["VmHWM"])
            healthz = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        finally:
            server.terminate()
            server.wait(timeout=30)

    latencies_ms = np.array(result["latencies"]) * 1000
    done = len(latencies_ms) + len(result["errors"])
    summary = {
        "clients": args.clients,
        "seconds": round(result["duration"], 2),
        "requests": done,
        "requests_per_second": round(done / result["duration"], 1),
        "latency_ms": {
            name: round(float(np.percentile(latencies_ms, q)), 1) if latencies_ms.size else None
            for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:5],
        "server_rss_mib": memory,
        "index": {key: healthz[key] for key in ("items", "embedding_dim", "index_kind", "backbone")},
        "query_bytes": len(image),
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(summary))
        return
    latency = summary["latency_ms"]
    print(f"{summary['clients']} clients for {summary['seconds']} s against {summary['index']}")
    print(f"requests: {summary['requests']}  ({summary['requests_per_second']} per second)")
    print(
        f"latency ms: p50 {latency['p50']}  p90 {latency['p90']}  p95 {latency['p95']}  p99 {latency['p99']}"
        f"  max {latency['max']}"
    )
    print(f"errors: {summary['errors']}" + "".join(f"\n  {e}" for e in summary["first_errors"]))
    print(
        f"server RSS MiB: before {memory.get('before')}  after {memory.get('after')}  "
        f"peak during the load {memory.get('peak')}"
    )
    print(f"machine: {summary['machine']}")


if __name__ == "__main__":
    main()
