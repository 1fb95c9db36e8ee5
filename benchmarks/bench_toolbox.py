"""What each retrieval step buys, on an open-set split of Fashion-MNIST, and re-ranking's memory on a
gallery of 100,000.

Open set: the demo's network (small_cnn 16-32-64, GeM, BN neck, 128-d) is trained for two epochs on 6
of Fashion-MNIST's 10 classes (data.validation.split=classes, fraction 0.4: the classes are drawn with
the split seed) with three losses: CosFace, ArcFace, and Triplet with a MultiSimilarity miner. The
other 4 classes (all 28,000 of their training and test images) are searched in themselves. Rows: the
CosFace model alone, then each step alone on top of it, then combinations, all through
`embedlab.pipelines.evaluate.evaluate_run_steps`, the function behind `embedlab evaluate`; each row
prints the equivalent command. Runs already trained in --out are reused.

Memory: k-reciprocal re-ranking of 1,000 queries against 100,000 gallery items (random clustered 128-d
vectors), graph over all 101,000 items, scored by the evaluation engine; peak RSS against the 40 GB a
dense 100,000 x 100,000 float32 matrix would take.

Usage:
    python benchmarks/bench_toolbox.py --out /tmp/toolbox            # open set, then memory
    python benchmarks/bench_toolbox.py --out /tmp/toolbox --skip-memory
    python benchmarks/bench_toolbox.py --memory-only --gallery 20000  # a quick memory check
    python benchmarks/bench_toolbox.py --out /tmp/toolbox --case best --skip-memory  # one case
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from embedlab.config import load_config
from embedlab.embeddings.encoder import EnsembleMember
from embedlab.evaluation import evaluate_retrieval
from embedlab.evaluation.steps import StepResult
from embedlab.models.tta import TestTimeAugmentation
from embedlab.pipelines.evaluate import evaluate_run_steps
from embedlab.retrieval.postprocessing import steps_from_options
from embedlab.retrieval.reranking import KReciprocalParameters, KReciprocalReranker
from embedlab.training.fit import fit

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_losses.yaml"
OPEN_SET = [
    "data.validation.split=classes",
    "data.validation.fraction=0.4",
    "data.gallery=validation",
    "grid={}",
]
LOSSES = {
    "cosface": "loss={name: CosFaceLoss, margin: 0.35, scale: 64}",
    "arcface": "loss={name: ArcFaceLoss, margin: 28.6, scale: 64}",
    "triplet": "loss={name: TripletMarginLoss, margin: 0.1, "
    "miner: {name: MultiSimilarityMiner, epsilon: 0.1}}",
}
METRICS = ["precision_at_1", "map_at_r"]


def train_runs(out: Path, epochs: int) -> dict[str, Path]:
    runs = {}
    for name, loss in LOSSES.items():
        folder = out / name
        if not (folder / "summary.json").is_file():
            cfg, _ = load_config(CONFIG, [*OPEN_SET, loss, f"train.epochs={epochs}"])
            began = time.perf_counter()
            fit(cfg, folder, force=True)
            print(f"trained {name} in {time.perf_counter() - began:.0f} s")
        runs[name] = folder
    return runs


def command(run: Path, options: str) -> str:
    return f"embedlab evaluate {run} {options}".strip()


def print_rows(title: str, cli: str, rows: list[StepResult]) -> None:
    print(f"\n{title}\n  {cli}")
    for i, row in enumerate(rows):
        metrics = "  ".join(f"{name} {row.result.metrics[name]:.4f}" for name in METRICS)
        label = row.step if i == 0 else f"+ {row.step}"
        print(
            f"  {label:<48} {metrics}   step {row.step_seconds:6.1f} s   scoring {row.scoring_seconds:6.1f} s"
        )


def open_set(out: Path, epochs: int, only: str | None) -> None:
    runs = train_runs(out, epochs)
    main, others = runs["cosface"], [runs["arcface"], runs["triplet"]]
    ensemble = [EnsembleMember(others[0], 0.8), EnsembleMember(others[1], 0.55)]
    ensemble_cli = f"--ensemble {others[0]}:0.8 --ensemble {others[1]}:0.55"
    flip = TestTimeAugmentation(flip=True)
    scales = TestTimeAugmentation(scales=(1.0, 1.25))
    cases: list[tuple[str, str, dict]] = [
        ("each step alone: test-time flip", "--tta flip", {"tta": flip}),
        ("each step alone: multi-scale", "--tta scales:1,1.25", {"tta": scales}),
        ("each step alone: ensemble", ensemble_cli, {"ensemble": ensemble}),
        ("each step alone: whitening on train", "--whiten 64 --whiten-on train",
         {"steps": steps_from_options(whiten=64, whiten_on="train")}),
        ("each step alone: whitening on gallery", "--whiten 64", {"steps": steps_from_options(whiten=64)}),
        ("each step alone: DBA", "--dba 5,3", {"steps": steps_from_options(dba="5,3")}),
        ("each step alone: QE k=2", "--qe 2,3", {"steps": steps_from_options(qe="2,3")}),
        ("each step alone: QE k=10", "--qe 10,3", {"steps": steps_from_options(qe="10,3")}),
        ("each step alone: re-ranking", "--rerank 20,6,0.3",
         {"steps": steps_from_options(rerank="20,6,0.3")}),
        ("all together", f"{ensemble_cli} --tta flip --dba 5,3 --qe 10,3 --rerank 20,6,0.3",
         {"ensemble": ensemble, "tta": flip,
          "steps": steps_from_options(dba="5,3", qe="10,3", rerank="20,6,0.3")}),
    ]  # fmt: skip
    best = steps_from_options(dba="5,3", qe="10,3", rerank="20,6,0.3")
    cases.append(
        (
            "best combination: the steps that raised map_at_r alone",
            f"{ensemble_cli} --dba 5,3 --qe 10,3 --rerank 20,6,0.3",
            {"ensemble": ensemble, "steps": best},
        )
    )
    for title, options, arguments in cases:
        if only and only not in title:
            continue
        rows = evaluate_run_steps(main, METRICS, **arguments)
        print_rows(title, command(main, f"--metrics {','.join(METRICS)} {options}"), rows)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rerank_memory(n_gallery: int, n_queries: int = 1000, dim: int = 128, classes: int = 1000) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    gallery_labels = rng.integers(0, classes, n_gallery)
    query_labels = rng.integers(0, classes, n_queries)
    gallery = centres[gallery_labels] + 1.5 * rng.normal(size=(n_gallery, dim)).astype(np.float32)
    queries = centres[query_labels] + 1.5 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"\nre-ranking memory: {n_queries:,} queries, gallery {n_gallery:,} x {dim}, {classes:,} classes")
    print(f"  inputs held: peak RSS so far {peak_rss_mib():.0f} MiB")
    began = time.perf_counter()
    plain = evaluate_retrieval(queries, query_labels, gallery, gallery_labels, metrics=METRICS)
    plain_seconds = time.perf_counter() - began
    began = time.perf_counter()
    reranker = KReciprocalReranker(queries, gallery, KReciprocalParameters(20, 6, 0.3))
    graph_seconds = time.perf_counter() - began
    began = time.perf_counter()
    reranked = evaluate_retrieval(
        queries, query_labels, gallery, gallery_labels, metrics=METRICS, rescore=reranker
    )
    scoring_seconds = time.perf_counter() - began
    dense_gib = (n_gallery + n_queries) ** 2 * 4 / 2**30
    print(f"  plain:     {plain.metrics}   {plain_seconds:.1f} s")
    print(f"  re-ranked: {reranked.metrics}   graph {graph_seconds:.1f} s, scoring {scoring_seconds:.1f} s")
    print(
        f"  peak RSS {peak_rss_mib():.0f} MiB; a dense (N + Nq)^2 float32 matrix would be {dense_gib:.1f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/toolbox"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--case", help="run only the open-set cases whose title contains this text")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if not args.memory_only:
        open_set(args.out, args.epochs, args.case)
    if not args.skip_memory:
        rerank_memory(args.gallery)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
