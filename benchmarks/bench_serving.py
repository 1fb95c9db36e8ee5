"""Load test of `embedlab serve` on loopback: concurrent clients posting images to /search.

The server runs as its own process (`embedlab serve`, bound to 127.0.0.1 on a free port), exactly as a
user starts it. Without --index the benchmark first makes a small deployment in a temporary folder: a
generated gallery (one flat colour with noise per identity), a small_cnn run trained for a few steps,
and its index. The client is one asyncio process whose --clients tasks each post a query image to
/search in a loop, one request at a time, with keep-alive connections, until --seconds have passed or
--max-requests have been sent; then the server is stopped. Traffic goes to 127.0.0.1 only.

Printed: requests, requests per second, latency p50 / p90 / p99 / max (from sending the request to
reading the whole response), errors (any status but 200, or a transport error), and the machine.
Client and server share the machine's cores, so the figures are a lower bound for the server alone.

Usage:
    python benchmarks/bench_serving.py                          # 50 clients for 30 s on a demo index
    python benchmarks/bench_serving.py --index runs/whales-index --query photo.jpg
    python benchmarks/bench_serving.py --clients 4 --seconds 3  # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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
    from embedlab.serving.build import build_gallery_index
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


async def load(url: str, image: bytes, clients: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """Run the clients; returns latencies (s) of successful requests, error count and the duration."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        for _ in range(WARM_UP_REQUESTS):
            await client.post(f"{url}/search", files={"file": ("query.png", image)})
        started = time.perf_counter()
        deadline = started + seconds

        async def one_client() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                begin = time.perf_counter()
                try:
                    response = await client.post(f"{url}/search", files={"file": ("query.png", image)})
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - begin)
                    else:
                        errors.append(f"status {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
        duration = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "duration": duration}


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
        try:
            result = asyncio.run(
                load(f"http://127.0.0.1:{port}", image, args.clients, args.seconds, args.max_requests)
            )
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
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
        "errors": len(result["errors"]),
        "first_errors": result["errors"][:5],
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
        f"latency ms: p50 {latency['p50']}  p90 {latency['p90']}  p99 {latency['p99']}  max {latency['max']}"
    )
    print(f"errors: {summary['errors']}" + "".join(f"\n  {e}" for e in summary["first_errors"]))
    print(f"machine: {summary['machine']}")


if __name__ == "__main__":
    main()
