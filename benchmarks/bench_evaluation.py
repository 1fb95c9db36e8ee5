"""Benchmark: embedlab's evaluation engine against pytorch-metric-learning's AccuracyCalculator.

For each size and class count, the same random 128-d embeddings (L2-normalised, labels uniform over
the classes) are written to .npy files, then each library scores them in its own subprocess, so that
each peak resident memory (ru_maxrss of the child) is its own. Printed per case: wall time of the
evaluation call, peak RSS, their ratios, and the largest absolute difference between the metric values.

AccuracyCalculator runs as its users run it for MAP@R: k="max_bin_count", its default faiss kNN (squared
L2, which ranks L2-normalised vectors like cosine). Compared metrics: precision_at_1, r_precision,
map_at_r (its mean_average_precision_at_r).

The large case (1,000,000 x 128, 10,000 classes) scores embedlab alone: exact search for the first
--large-exact-queries queries against all 1,000,000 items (the whole exact run is about 2.6e14 flops,
hours on two cores), then faiss IVF for all 1,000,000 queries with its recall against exact search.

Usage:
    python benchmarks/bench_evaluation.py                  # 10k and 50k, 10 and 1,000 classes
    python benchmarks/bench_evaluation.py --large --max-memory-gib 4   # 1,000,000 x 128, 10,000 classes
    python benchmarks/bench_evaluation.py --large --max-memory-gib 4 --large-exact-queries 1000000 \
        --no-large-ivf                                                 # all 1,000,000 queries, exact
    python benchmarks/bench_evaluation.py --sizes 2000 --classes 10   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

COMPARED = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "map_at_r": "mean_average_precision_at_r",
}
LARGE_METRICS = ("precision_at_1", "recall_at_10", "map_at_100")
IVF_NLIST = 1024
IVF_NPROBE = 16


def make_data(n: int, n_classes: int, dim: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """Write L2-normalised Gaussian embeddings (n, dim) float32 and uniform labels (n,) int64."""
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n, dim), dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, n_classes, size=n)
    x_path, y_path = folder / f"x_{n}_{n_classes}.npy", folder / f"y_{n}_{n_classes}.npy"
    np.save(x_path, embeddings)
    np.save(y_path, labels)
    return x_path, y_path


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(
    library: str,
    x_path: str,
    y_path: str,
    metrics: list[str],
    max_memory_bytes: int,
    verbose: bool,
    n_queries: int,
    method: str,
) -> dict[str, Any]:
    """Score one data set with one library; returns seconds, peak RSS and values by embedlab name.

    n_queries > 0 (embedlab only): the first n_queries rows are the queries, searched in the whole set
    with their own rows excluded. method "ivf" (embedlab only) adds the index's measured recall.
    """
    embeddings = np.load(x_path)
    labels = np.load(y_path)
    if library == "embedlab":
        from embedlab.evaluation import evaluate_scenarios
        from embedlab.retrieval import IndexOptions

        # Block-by-block progress on stderr, which the parent passes through.
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="    %(asctime)s %(message)s")
        logging.getLogger("embedlab.evaluation").setLevel(logging.DEBUG if verbose else logging.WARNING)
        baseline = peak_rss_mib()
        queries = np.arange(n_queries if n_queries > 0 else labels.size)
        start = time.perf_counter()
        result = evaluate_scenarios(
            embeddings,
            labels,
            scenarios={"queries": (queries, np.ones(labels.size, dtype=bool))},
            metrics=metrics,
            max_memory_bytes=max_memory_bytes,
            method=method,  # type: ignore[arg-type]
            index_options=IndexOptions(ivf_nlist=IVF_NLIST, ivf_nprobe=IVF_NPROBE),
        )["queries"]
        seconds = time.perf_counter() - start
        values = result.metrics
        if result.search_recall is not None:
            values = {**values, f"ivf_recall_at_{result.search_recall.k}": result.search_recall.recall}
    else:
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calculator = AccuracyCalculator(
            include=tuple(COMPARED[m] for m in metrics), k="max_bin_count", device=torch.device("cpu")
        )
        baseline = peak_rss_mib()
        start = time.perf_counter()
        accuracies = calculator.get_accuracy(embeddings, labels)
        seconds = time.perf_counter() - start
        values = {m: float(accuracies[COMPARED[m]]) for m in metrics}
    return {"seconds": seconds, "rss_mib": peak_rss_mib(), "rss_before_mib": baseline, "values": values}


def run_worker(
    library: str,
    x_path: Path,
    y_path: Path,
    metrics: tuple[str, ...],
    max_memory_bytes: int,
    verbose: bool = False,
    n_queries: int = 0,
    method: str = "exact",
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        library,
        "--x",
        str(x_path),
        "--y",
        str(y_path),
        "--metrics",
        ",".join(metrics),
        "--max-memory-gib",
        str(max_memory_bytes / 2**30),
        "--queries",
        str(n_queries),
        "--method",
        method,
        *(["--verbose"] if verbose else []),
    ]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def load() -> str:
    """The 1-minute load average: the machine may be shared, which slows both libraries."""
    return f"load average {os.getloadavg()[0]:.1f}"


def compare(n: int, n_classes: int, dim: int, seed: int, folder: Path, max_memory_bytes: int) -> None:
    x_path, y_path = make_data(n, n_classes, dim, seed, folder)
    metrics = tuple(COMPARED)
    print(f"N={n:,} D={dim} classes={n_classes:,} ({load()} at start)", flush=True)
    ours = run_worker("embedlab", x_path, y_path, metrics, max_memory_bytes)
    theirs = run_worker("accuracy_calculator", x_path, y_path, metrics, max_memory_bytes)
    difference = max(abs(ours["values"][m] - theirs["values"][m]) for m in metrics)
    for name, result in (("embedlab", ours), ("AccuracyCalculator", theirs)):
        values = ", ".join(f"{m}={result['values'][m]:.10f}" for m in metrics)
        print(
            f"  {name:<19} {result['seconds']:9.2f} s   peak RSS {result['rss_mib']:8.0f} MiB "
            f"(before the call {result['rss_before_mib']:.0f} MiB)   {values}"
        )
    print(
        f"  speed-up {theirs['seconds'] / ours['seconds']:.1f}x   "
        f"peak memory ratio embedlab/AccuracyCalculator {ours['rss_mib'] / theirs['rss_mib']:.3f}   "
        f"max |difference| {difference:.2e}   values agree within 1e-6: {difference <= 1e-6}   ({load()})",
        flush=True,
    )


def large(
    n: int,
    n_classes: int,
    dim: int,
    seed: int,
    folder: Path,
    max_memory_bytes: int,
    exact_queries: int,
    with_ivf: bool,
) -> None:
    """Exact search for the first `exact_queries` queries against all n items, then (with_ivf) IVF for
    all n."""
    x_path, y_path = make_data(n, n_classes, dim, seed, folder)
    runs = (
        (f"exact, the first {exact_queries:,} queries against all {n:,}", exact_queries, "exact"),
        (f"ivf (nlist={IVF_NLIST}, nprobe={IVF_NPROBE}), all {n:,} queries", 0, "ivf"),
    )
    for title, n_queries, method in runs:
        if (method == "exact" and n_queries == 0) or (method == "ivf" and not with_ivf):
            continue
        print(f"N={n:,} D={dim} classes={n_classes:,}, embedlab {title} ({load()} at start)", flush=True)
        ours = run_worker(
            "embedlab", x_path, y_path, LARGE_METRICS, max_memory_bytes, True, n_queries, method
        )
        values = ", ".join(f"{m}={v:.6f}" for m, v in ours["values"].items())
        print(
            f"  {ours['seconds']:.1f} s, peak RSS {ours['rss_mib']:.0f} MiB (before the call "
            f"{ours['rss_before_mib']:.0f} MiB), {values} ({load()} at end)",
            flush=True,
        )
        if n_queries:
            print(f"  exact, all {n:,} queries at this rate: {ours['seconds'] * n / n_queries / 3600:.1f} h")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="run 1,000,000 x D, 10,000 classes")
    parser.add_argument(
        "--max-memory-gib", type=float, default=1.0, help="embedlab's max_memory_bytes, in GiB (default 1)"
    )
    parser.add_argument("--worker", choices=["embedlab", "accuracy_calculator"], help=argparse.SUPPRESS)
    parser.add_argument("--x", help=argparse.SUPPRESS)
    parser.add_argument("--y", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--large-exact-queries",
        type=int,
        default=20_000,
        help="queries searched exactly in the large run (0 skips the exact part)",
    )
    parser.add_argument(
        "--large-ivf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also score every query of the large run with faiss IVF (--no-large-ivf skips it)",
    )
    parser.add_argument("--queries", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="exact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    max_memory = int(args.max_memory_gib * 2**30)
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker,
                    args.x,
                    args.y,
                    args.metrics.split(","),
                    max_memory,
                    args.verbose,
                    args.queries,
                    args.method,
                )
            )
        )
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, numpy {np.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.large:
            large(
                1_000_000,
                10_000,
                args.dim,
                args.seed,
                Path(tmp),
                max_memory,
                args.large_exact_queries,
                args.large_ivf,
            )
            return
        for n in args.sizes:
            for n_classes in args.classes:
                compare(n, n_classes, args.dim, args.seed, Path(tmp), max_memory)


if __name__ == "__main__":
    main()
