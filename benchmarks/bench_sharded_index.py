"""Benchmark: a gallery of 1,000,000 synthetic 128-d embeddings in shards, indexed with IVF-PQ split over
several files, beside exact faiss search (IndexFlatIP) as the peer, measured in the same run.

1. The gallery is written as the shards `embedlab embed` writes (10 shards of 100,000), one shard in
   memory at a time: 100,000 identities of 10 images, each image its identity's random unit centre plus
   Gaussian noise of norm about 0.6, L2-normalised (so an image's 9 fellow images are its nearest
   neighbours, as in a trained embedding). 10,000 queries are new images of random identities.
2. `build_index_from_shards` (what `embedlab index build --embeddings` runs) builds the IVF-PQ index
   (defaults: 4 x sqrt(N) = 4,000 cells, 16-byte codes, trained on a sample of 160,000 rows) split over
   4 files, in a process of its own: wall time and peak resident memory (ru_maxrss of that process).
3. The index is loaded as a server loads it (`load_index`) and searched for the top 10 of the 10,000
   queries in one batch (median of 3) and of 1,000 queries one at a time: queries per second; then the
   first 1,000 queries again in one batch with 16, 64 and 256 cells probed, for recall against speed.
4. The peer: faiss IndexFlatIP over the same shards (all rows in memory, as exact search needs), in a
   process of its own: build time, peak memory, and the exact top 10 of the first 1,000 queries
   (median of 3 timed batches), which is the ground truth of IVF-PQ's recall@10.

Usage:
    python benchmarks/bench_sharded_index.py                     # 1,000,000 rows, 2 threads
    python benchmarks/bench_sharded_index.py --rows 100000 --shard-rows 20000   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 128
IMAGES_PER_IDENTITY = 10
NOISE_NORM = 0.6
N_QUERIES = 10_000
RECALL_QUERIES = 1_000
K = 10
NPROBES = (16, 64, 256)

SYNTHETIC_MODEL = {
    "run_dir": "synthetic",
    "checkpoint": "best",
    "checkpoint_sha256": "0" * 64,
    "backbone": "synthetic",
    "embedding_dim": DIM,
}
SYNTHETIC_PREPROCESSING = {"channels": 3, "image_size": 1, "mean": [0.0] * 3, "std": [1.0] * 3}


def peak_rss_mib() -> float:
    """This process's peak resident set size: VmHWM, the high-water mark of its own memory (ru_maxrss
    would carry over the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def images_of(centres: np.ndarray, identities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((len(identities), DIM), dtype=np.float32) * (NOISE_NORM / np.sqrt(DIM))
    return _unit(centres[identities] + noise)


def write_gallery(folder: Path, n_rows: int, shard_rows: int, seed: int) -> tuple[float, np.ndarray]:
    """Write the shards and return (seconds, the queries (N_QUERIES, DIM))."""
    from embedlab.embeddings.shards import (
        Shard,
        ShardSpec,
        write_items,
        write_manifest,
        write_shard,
        write_spec,
    )

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_identities = n_rows // IMAGES_PER_IDENTITY
    centres = _unit(rng.standard_normal((n_identities, DIM), dtype=np.float32))
    spec = ShardSpec(
        model=SYNTHETIC_MODEL,
        preprocessing=SYNTHETIC_PREPROCESSING,
        source="synthetic",
        n_items=n_rows,
        shard_size=shard_rows,
        embedding_dim=DIM,
        label_names=[str(i) for i in range(n_identities)],
    )
    write_spec(folder, spec)
    write_items(
        folder,
        (
            {"path": f"/synthetic/{i}.png", "label": str(i // IMAGES_PER_IDENTITY), "extra": {}}
            for i in range(n_rows)
        ),
    )
    for shard in range(spec.n_shards):
        ids = np.arange(spec.ids_of(shard).start, spec.ids_of(shard).stop)
        identities = ids // IMAGES_PER_IDENTITY
        write_shard(folder, shard, Shard(ids, identities, images_of(centres, identities, rng)))
    write_manifest(folder, spec)
    queries = images_of(centres, rng.integers(n_identities, size=N_QUERIES), rng)
    return time.perf_counter() - started, queries


# ----------------------------------------------------------------------- the roles of the children


def build_role(shards: str, out: str, index_shards: int) -> dict[str, Any]:
    from embedlab.index.shards import FaissSettings, build_index_from_shards

    before = peak_rss_mib()
    started = time.perf_counter()
    manifest = build_index_from_shards(shards, out, kind="ivfpq", faiss=FaissSettings(shards=index_shards))
    seconds = time.perf_counter() - started
    record = manifest.faiss
    assert record.recall is not None
    files = [Path(out) / name for name in record.files()]
    return {
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": before,
        "nlist": record.ivf_nlist,
        "pq_m": record.pq_m,
        "train_size": record.train_size,
        "nprobe": record.ivf_nprobe,
        "build_recall_at_10": record.recall.recall,
        "faiss_bytes": sum(f.stat().st_size for f in files),
        "embeddings_bytes": (Path(out) / "embeddings.npy").stat().st_size,
    }


def _timed(call: Any, repeats: int) -> tuple[float, Any]:
    """Median seconds of `repeats` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def search_role(index_dir: str, queries: str, ids_out: str) -> dict[str, Any]:
    from embedlab.index.store import load_index

    rows = np.load(queries)
    started = time.perf_counter()
    index = load_index(index_dir)
    load_seconds = time.perf_counter() - started
    batch_seconds, (_, ids) = _timed(lambda: index.search(rows, K), repeats=3)
    single = rows[:RECALL_QUERIES]
    one_seconds, _ = _timed(lambda: [index.search(single[i : i + 1], K) for i in range(len(single))], 1)
    np.save(ids_out, ids[:RECALL_QUERIES])
    from embedlab.retrieval.faiss_index import set_search_parameters

    probes = {}
    for nprobe in NPROBES:
        set_search_parameters(index.faiss_index, nprobe=nprobe, ef_search=128)
        seconds, (_, probe_ids) = _timed(lambda: index.search(single, K), repeats=3)
        np.save(ids_out.replace(".npy", f"-nprobe{nprobe}.npy"), probe_ids)
        probes[nprobe] = len(single) / seconds
    return {
        "load_seconds": load_seconds,
        "batch_queries_per_second": len(rows) / batch_seconds,
        "single_queries_per_second": len(single) / one_seconds,
        "queries_per_second_by_nprobe": probes,
        "peak_rss_mib": peak_rss_mib(),
    }


def flat_role(shards: str, queries: str, ids_out: str) -> dict[str, Any]:
    import faiss

    from embedlab.embeddings.shards import EmbeddingShards

    before = peak_rss_mib()
    started = time.perf_counter()
    gallery = EmbeddingShards(shards)
    index = faiss.IndexFlatIP(gallery.dim)
    for shard in gallery:
        index.add(shard.embeddings)
    build_seconds = time.perf_counter() - started
    rows = np.load(queries)[:RECALL_QUERIES]
    search_seconds, (_, ids) = _timed(lambda: index.search(rows, K), repeats=3)
    np.save(ids_out, ids)
    return {
        "seconds": build_seconds,
        "batch_queries_per_second": len(rows) / search_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": before,
        "index_bytes": index.ntotal * index.d * 4,
    }


ROLES = {"build": build_role, "search": search_role, "flat": flat_role}


def run_role(role: str, *args: str) -> dict[str, Any]:
    """Run a role in a fresh process, so its peak memory is its own."""
    result = subprocess.run(
        [sys.executable, __file__, "--role", role, *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{role} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--index-shards", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role:
        import faiss

        faiss.omp_set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        print(json.dumps(ROLES[args.role](*rest)))
        return

    os.environ["BENCH_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-sharded-") as scratch:
        folder = Path(scratch)
        print(
            f"N={args.rows:,} D={DIM}, {args.rows // args.shard_rows} shards, {args.threads} threads",
            flush=True,
        )
        print(f"load average at start: {load_average():.1f}", flush=True)
        write_seconds, queries = write_gallery(folder / "shards", args.rows, args.shard_rows, args.seed)
        np.save(folder / "queries.npy", queries)
        print(f"wrote the shards in {write_seconds:.1f} s", flush=True)

        build = run_role("build", str(folder / "shards"), str(folder / "index"), str(args.index_shards))
        print(f"ivfpq build: {json.dumps(build)} (load average {load_average():.1f})", flush=True)
        search = run_role(
            "search", str(folder / "index"), str(folder / "queries.npy"), str(folder / "ivfpq.npy")
        )
        print(f"ivfpq search: {json.dumps(search)} (load average {load_average():.1f})", flush=True)
        flat = run_role("flat", str(folder / "shards"), str(folder / "queries.npy"), str(folder / "flat.npy"))
        print(f"flat: {json.dumps(flat)} (load average {load_average():.1f})", flush=True)

        from embedlab.retrieval.recall import recall_at_k

        exact = np.load(folder / "flat.npy")
        recall = recall_at_k(np.load(folder / "ivfpq.npy"), exact)
        for nprobe in NPROBES:
            found = np.load(folder / f"ivfpq-nprobe{nprobe}.npy")
            speed = search["queries_per_second_by_nprobe"][str(nprobe)]
            print(
                f"nprobe {nprobe}: recall@{K} {recall_at_k(found, exact):.4f}, {speed:,.0f} q/s", flush=True
            )
        print(
            f"\nrecall@{K} of IVF-PQ against exact search, {RECALL_QUERIES} held-out queries: {recall:.4f}\n"
            f"search, batch of queries: IVF-PQ {search['batch_queries_per_second']:,.0f} q/s, flat "
            f"{flat['batch_queries_per_second']:,.0f} q/s "
            f"({search['batch_queries_per_second'] / flat['batch_queries_per_second']:.1f}x)\n"
            f"index in memory: IVF-PQ {build['faiss_bytes'] / 2**20:.1f} MiB, flat "
            f"{flat['index_bytes'] / 2**20:.1f} MiB ({flat['index_bytes'] / build['faiss_bytes']:.1f}x)\n"
            f"build: IVF-PQ {build['seconds']:.1f} s (peak RSS {build['peak_rss_mib']:.0f} MiB), flat "
            f"{flat['seconds']:.1f} s (peak RSS {flat['peak_rss_mib']:.0f} MiB)",
            flush=True,
        )


if __name__ == "__main__":
    main()
