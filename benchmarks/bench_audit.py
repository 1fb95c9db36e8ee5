"""Benchmark: the audit's stages after embedding (nearest neighbours, duplicate groups, label errors,
merge candidates) at 10,000 and 100,000 synthetic items, beside scikit-learn's brute-force
`NearestNeighbors.kneighbors` (cosine), which a hand-written audit script would call for the same 20
neighbours, measured in the same run.

Items: N / 5 identities of 5 items each, 128-d unit vectors (an identity's centre plus noise), 1% of the
items exact copies of another item (same vector, same pixel hash), 1% of them under another identity.
Each workflow runs in a fresh process, alone; printed per workflow and size: wall seconds (median over
--repeats) and the process's peak resident memory (ru_maxrss), also less that of a baseline process that
only imports the same modules and makes the items (which include the 51 MB of embeddings at 100,000).
embedlab exact is the blocked exact search (one block of similarities at a time);
embedlab hnsw is faiss's HNSW with its recall@20 against exact search measured on 1,000 items (the
audit's `--search hnsw`, its default above 200,000 items).

    python benchmarks/bench_audit.py [--sizes 10000 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 128
PER_IDENTITY = 5
NEIGHBOURS = 20


def synthetic(n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n_items) // PER_IDENTITY
    centres = rng.normal(size=(labels.max() + 1, DIM)).astype(np.float32)
    vectors = centres[labels] + 0.6 * rng.normal(size=(n_items, DIM)).astype(np.float32)
    hashes = [f"h{n}" for n in range(n_items)]
    copies = rng.choice(n_items, size=(n_items // 100, 2), replace=False)
    for original, copy in copies:
        vectors[copy], hashes[copy] = vectors[original], hashes[original]
    relabelled = copies[: len(copies) // 2, 1]
    labels[relabelled] = (labels[relabelled] + 1) % (labels.max() + 1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, labels, hashes


def audit_items(labels: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    from embedlab.audit.items import AuditItems
    from embedlab.data.images import ImageFiles

    count = labels.size
    paths = [Path(f"/synthetic/{n}.png") for n in range(count)]
    files = ImageFiles(labels=torch.from_numpy(labels), paths=paths)
    return AuditItems(
        paths=paths,
        boxes=[None] * count,
        labels=labels,
        label_names=[str(n) for n in range(labels.max() + 1)],
        split=np.array(["train"] * count),
        is_query=np.zeros(count, bool),
        is_gallery=np.zeros(count, bool),
        train=files,
        validation=files.subset(torch.empty(0, dtype=torch.long)),
        validation_searches_train=False,
    )


def run_embedlab(n_items: int, method: str) -> dict[str, object]:
    from embedlab.audit.duplicates import exact_groups, near_groups
    from embedlab.audit.identities import label_errors, merge_candidates, vote_count
    from embedlab.audit.neighbours import nearest_neighbours

    vectors, labels, hashes = synthetic(n_items)
    items = audit_items(labels)
    began = time.perf_counter()
    found = nearest_neighbours(vectors, NEIGHBOURS, method=method)  # type: ignore[arg-type]
    exact = exact_groups(hashes, items)
    near = near_groups(found.ids, found.similarities, 0.95, hashes, items)
    errors = label_errors(found.ids, found.similarities, labels, vote_count(np.bincount(labels), NEIGHBOURS))
    merges = merge_candidates(found.ids, found.similarities, labels)
    return {
        "seconds": time.perf_counter() - began,
        "exact_groups": len(exact),
        "near_groups": len(near),
        "label_errors": int(errors.items.size),
        "merges": int(merges.first.size),
        "recall": found.recall,
    }


def run_sklearn(n_items: int) -> dict[str, object]:
    from sklearn.neighbors import NearestNeighbors

    vectors, _, _ = synthetic(n_items)
    began = time.perf_counter()
    model = NearestNeighbors(n_neighbors=NEIGHBOURS + 1, metric="cosine", algorithm="brute").fit(vectors)
    model.kneighbors(vectors)
    return {"seconds": time.perf_counter() - began}


def run_baseline(n_items: int) -> dict[str, object]:
    """What every workflow's process holds before its work: the imports and the synthetic items."""
    import sklearn.neighbors  # noqa: F401

    from embedlab.audit import duplicates, identities, neighbours  # noqa: F401

    synthetic(n_items)
    audit_items(synthetic(n_items)[1])
    return {"seconds": 0.0}


def child(workflow: str, n_items: int) -> None:
    if workflow == "baseline":
        result = run_baseline(n_items)
    elif workflow == "sklearn":
        result = run_sklearn(n_items)
    else:
        result = run_embedlab(n_items, workflow.split()[-1])
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(workflow: str, n_items: int) -> dict[str, object]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", workflow, str(n_items)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    print(f"{'items':>8} {'workflow':<16} {'median s':>9} {'peak MB':>8} {'above baseline':>15}  found")
    for n_items in args.sizes:
        medians = {}
        baseline = float(measure("baseline", n_items)["peak_mb"])  # type: ignore[arg-type]
        print(f"{n_items:>8} {'baseline':<16} {'':>9} {baseline:>8.0f}  (imports and items only)")
        for workflow in ("embedlab exact", "embedlab hnsw", "sklearn"):
            runs = [measure(workflow, n_items) for _ in range(args.repeats)]
            seconds = statistics.median(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
            medians[workflow] = seconds
            peak = max(float(r["peak_mb"]) for r in runs)  # type: ignore[arg-type]
            found = {k: v for k, v in runs[0].items() if k not in ("seconds", "peak_mb")}
            above = peak - baseline
            print(
                f"{n_items:>8} {workflow:<16} {seconds:>9.2f} {peak:>8.0f} {above:>15.0f}  {found or ''}",
                flush=True,
            )
        ratio = medians["sklearn"] / medians["embedlab exact"]
        print(f"{n_items:>8} sklearn's kneighbors alone / embedlab's whole exact audit stage: {ratio:.2f}x")


if __name__ == "__main__":
    main()
