"""Benchmark: exact evaluation and search on a GPU, against the CPU engine and faiss.

What it measures (prints figures, asserts nothing):
(a) the wall seconds of `evaluate_retrieval` on the GPU for N x N embeddings searched in themselves
    (each query's own row excluded), for precision_at_1, recall_at_10 and map_at_100. The embeddings
    are synthetic, seeded, and made on the device in chunks: --classes unit class centres plus
    Gaussian noise of norm --noise, L2-normalised (default 1,000,000 x 128, 10,000 classes; target
    under 60 s on an H200);
(b) that the GPU values equal the CPU numpy engine's: the first --queries items searched in the first
    --check-gallery items (their own rows excluded), scored by both engines; the largest absolute
    difference per metric and both times;
(c) search throughput in queries per second over all N items, k = --k: embedlab's exact search on the
    device (torch block product, the gallery-index tie rule), against faiss used directly: on the GPU
    (GpuIndexFlatIP, GpuIndexIVFPQ) when faiss has GPU support, else faiss-cpu's IndexFlatIP and
    IndexIVFPQ.

--device cpu runs the very same torch code on CPU tensors: a smoke run on a machine without a GPU, e.g.
    python benchmarks/gpu_evaluation.py --n 20000 --classes 200 --device cpu
At the default sizes the whole script takes a few minutes on one H200.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import TypeVar

import faiss
import numpy as np
import torch

from embedlab.evaluation import evaluate_retrieval
from embedlab.retrieval import search

METRICS = ["precision_at_1", "recall_at_10", "map_at_100"]
GENERATION_CHUNK = 131_072
T = TypeVar("T")


def synthetic_embeddings(
    n: int, dim: int, classes: int, noise: float, device: torch.device, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit rows around `classes` unit centres, Gaussian noise of norm about `noise`,
    and their labels; drawn on `device` in chunks, returned on the host."""
    generator = torch.Generator(device=device).manual_seed(seed)
    centres = torch.nn.functional.normalize(
        torch.randn(classes, dim, generator=generator, device=device), dim=1
    )
    rows, labels = [], []
    for start in range(0, n, GENERATION_CHUNK):
        size = min(GENERATION_CHUNK, n - start)
        chunk_labels = torch.randint(classes, (size,), generator=generator, device=device)
        offsets = torch.randn(size, dim, generator=generator, device=device) * (noise / math.sqrt(dim))
        rows.append(torch.nn.functional.normalize(centres[chunk_labels] + offsets, dim=1).cpu().numpy())
        labels.append(chunk_labels.cpu().numpy())
    return np.concatenate(rows), np.concatenate(labels)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """function()'s result and its wall seconds, the device's queued work included."""
    synchronise(device)
    began = time.perf_counter()
    result = function()
    synchronise(device)
    return result, time.perf_counter() - began


def full_evaluation(embeddings: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
    result, seconds = timed(
        lambda: evaluate_retrieval(embeddings, labels, metrics=METRICS, device=device), device
    )
    values = ", ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
    print(f"(a) {len(labels):,} x {len(labels):,} evaluated on {device} in {seconds:.1f} s: {values}")


def check_against_cpu(
    embeddings: np.ndarray, labels: np.ndarray, n_queries: int, n_gallery: int, device: torch.device
) -> None:
    problem = {
        "query_embeddings": embeddings[:n_queries],
        "query_labels": labels[:n_queries],
        "gallery_embeddings": embeddings[:n_gallery],
        "gallery_labels": labels[:n_gallery],
        "exclude_index": np.arange(n_queries),
        "metrics": METRICS,
    }
    on_device, device_seconds = timed(lambda: evaluate_retrieval(**problem, device=device), device)
    began = time.perf_counter()
    on_cpu = evaluate_retrieval(**problem, device="cpu")
    cpu_seconds = time.perf_counter() - began
    differences = ", ".join(
        f"{name} {abs(on_device.metrics[name] - on_cpu.metrics[name]):.2e}" for name in METRICS
    )
    print(
        f"(b) {n_queries:,} queries x {n_gallery:,} items: {device} {device_seconds:.1f} s, CPU numpy engine "
        f"{cpu_seconds:.1f} s; max abs difference per metric: {differences}"
    )


def _throughput(label: str, n_queries: int, seconds: float) -> None:
    print(f"    {label:<42} {n_queries / seconds:>12,.0f} queries/s ({seconds:.2f} s)")


def search_throughput(embeddings: np.ndarray, n_queries: int, k: int, device: torch.device) -> None:
    queries = embeddings[:n_queries]
    print(f"(c) search of {n_queries:,} queries in {len(embeddings):,} items, k = {k}:")
    _, seconds = timed(lambda: search(queries, embeddings, k, metric="inner_product", device=device), device)
    _throughput(f"embedlab exact search on {device}", n_queries, seconds)
    on_gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    where = "GPU" if on_gpu else "CPU"
    resources = faiss.StandardGpuResources() if on_gpu else None

    def placed(index: faiss.Index) -> faiss.Index:
        return faiss.index_cpu_to_gpu(resources, device.index or 0, index) if on_gpu else index

    flat = placed(faiss.IndexFlatIP(embeddings.shape[1]))
    flat.add(embeddings)
    _, seconds = timed(lambda: flat.search(queries, k), device)
    _throughput(f"faiss IndexFlatIP ({where})", n_queries, seconds)
    nlist = max(1, min(int(4 * math.sqrt(len(embeddings))), len(embeddings) // 40))
    pq_m = max(d for d in range(1, embeddings.shape[1] // 8 + 1) if embeddings.shape[1] % d == 0)
    ivfpq = placed(
        faiss.IndexIVFPQ(
            faiss.IndexFlatIP(embeddings.shape[1]),
            embeddings.shape[1],
            nlist,
            pq_m,
            8,
            faiss.METRIC_INNER_PRODUCT,
        )
    )
    train = embeddings[
        np.random.default_rng(0).choice(len(embeddings), min(len(embeddings), 40 * nlist), False)
    ]
    _, build_seconds = timed(lambda: (ivfpq.train(train), ivfpq.add(embeddings)), device)
    # Where the index lives decides which parameter space can set its nprobe.
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    space.set_index_parameter(ivfpq, "nprobe", 16)
    _, seconds = timed(lambda: ivfpq.search(queries, k), device)
    _throughput(f"faiss IndexIVFPQ nlist={nlist} nprobe=16 ({where})", n_queries, seconds)
    print(f"    (IVF-PQ trained and filled in {build_seconds:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="embeddings, searched in themselves")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=2.0, help="noise norm around the unit class centres")
    parser.add_argument("--queries", type=int, default=20_000, help="queries of the check against the CPU")
    parser.add_argument("--check-gallery", type=int, default=200_000, help="gallery items of that check")
    parser.add_argument("--search-queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (torch on CPU tensors)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    embeddings, labels = timed(
        lambda: synthetic_embeddings(args.n, args.dim, args.classes, args.noise, device, args.seed), device
    )[0]
    print(f"{args.n:,} x {args.dim} float32 embeddings of {args.classes:,} classes, made on {device}")
    full_evaluation(embeddings, labels, device)
    check_against_cpu(embeddings, labels, min(args.queries, args.n), min(args.check_gallery, args.n), device)
    search_throughput(embeddings, min(args.search_queries, args.n), args.k, device)


if __name__ == "__main__":
    main()
