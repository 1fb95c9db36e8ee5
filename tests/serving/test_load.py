"""The server under load (issue 19, point 5): 50 concurrent clients for 30 s over loopback, no errors.

The clients are benchmarks/bench_serving.py's (raw asyncio HTTP/1.1 keep-alive connections, each
posting a query as soon as its previous answer came), so the suite runs the load the benchmark
measures. Bounded: the clients stop after LOAD_SECONDS or MAX_REQUESTS requests, whichever comes
first, and no request may take longer than the benchmark's 30 s timeout. No time is asserted.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

CLIENTS = 50
LOAD_SECONDS = 30.0
MAX_REQUESTS = 20_000
BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "bench_serving.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serving", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fifty_clients_for_thirty_seconds_get_no_errors(server, deployment) -> None:
    image = (deployment.gallery / "whale_c" / "1.png").read_bytes()
    result = asyncio.run(_benchmark().load(server.port, image, CLIENTS, LOAD_SECONDS, MAX_REQUESTS))
    served = len(result["latencies"])
    print(f"{served} requests in {result['duration']:.1f} s, {len(result['errors'])} errors")
    assert result["errors"] == [], result["errors"][:5]
    assert served >= CLIENTS  # every client was answered at least once
    assert server.process.poll() is None
