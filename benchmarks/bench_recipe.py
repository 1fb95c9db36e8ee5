"""Benchmark: `embedlab train` with the Fashion-MNIST recipe against the founding workflow, in one run.

The founding workflow, as the founding documents ran it: pytorch-metric-learning's MNIST example
network with a 50-d output, CircleLoss(m=0.4, gamma=80), batch 32, Adam at 1e-3, 10 epochs, in a plain
PyTorch loop fed by a torchvision-style dataset (each image through PIL, ToTensor and Normalize).

Both workflows are scored after every epoch on the same protocol, with embedlab's evaluation engine
(evaluation time excluded from the training time):
- closed set: the 10,000 Fashion-MNIST test images searched in the 60,000 training images;
- open set (--protocol open): trained on 6 classes, the other 4 classes' 28,000 images searched in
  themselves (embedlab's `data.validation.split: classes` with fraction 0.4, seed 0).

Printed: each workflow's curve of P@1 and MAP@R against elapsed training time, then
- the time embedlab needs to reach the founding workflow's final P@1, as a fraction of the founding
  workflow's total training time (target at most 0.25);
- embedlab's P@1 and MAP@R at the founding workflow's total training time (its last evaluation at or
  before it) against the founding final values (target +1.5 and +5 points);
- the throughput ratio: `embedlab train` with the founding network, loss, batch and optimiser, against
  the founding loop (target at least 0.9), and against the same loop fed tensor batches.

Usage:
    python benchmarks/bench_recipe.py --out /tmp/recipe                    # closed set, the full run
    python benchmarks/bench_recipe.py --out /tmp/recipe --protocol open
    python benchmarks/bench_recipe.py --out /tmp/quick --founding-epochs 1 --throughput-steps 100
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning import losses
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from embedlab.config import load_config
from embedlab.data.images import InMemoryImages
from embedlab.data.splits import DataSplits, prepare_data
from embedlab.evaluation import evaluate_retrieval

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "fashion_mnist_recipe.yaml"
FOUNDING_CONFIG = ROOT / "configs" / "fashion_mnist_founding.yaml"
METRICS = ("precision_at_1", "map_at_r")
FOUNDING_BATCH = 32
FOUNDING_LR = 1e-3
FOUNDING_DIM = 50
# torchvision's MNIST example statistics, which pytorch-metric-learning's example uses
FOUNDING_MEAN, FOUNDING_STD = 0.1307, 0.3081


class FoundingNetwork(nn.Module):
    """pytorch-metric-learning's MNIST example network, its last layer cut to 50 outputs."""

    def __init__(self, embedding_dim: int = FOUNDING_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        self.fc1 = nn.Linear(9216, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        return self.fc1(torch.flatten(x, 1))


class PerImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """What torchvision's FashionMNIST dataset does per item: a PIL image through the transform."""

    def __init__(self, images: InMemoryImages) -> None:
        self.images = images.images[:, 0].numpy()
        self.labels = images.labels.tolist()
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((FOUNDING_MEAN,), (FOUNDING_STD,))]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index], mode="L")), self.labels[index]


def tensor_batches(images: InMemoryImages, batch_size: int, generator: torch.Generator) -> Iterator:
    """The same loop's data as shuffled batches of in-memory tensors (no per-image work)."""
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chosen = order[start : start + batch_size]
        pixels = images.images[chosen].float().div_(255.0)
        yield (pixels - FOUNDING_MEAN) / FOUNDING_STD, images.labels[chosen]


@dataclass
class Point:
    """One evaluation of a workflow: after `epoch`, `train_seconds` of training in all."""

    epoch: int
    train_seconds: float
    images_per_second: float
    precision_at_1: float
    map_at_r: float


@torch.no_grad()
def _embed_founding(model: nn.Module, images: InMemoryImages) -> np.ndarray:
    model.eval()
    rows = []
    for start in range(0, len(images), 1024):
        pixels = images.images[start : start + 1024].float().div_(255.0)
        rows.append(F.normalize(model((pixels - FOUNDING_MEAN) / FOUNDING_STD), dim=1))
    model.train()
    return torch.cat(rows).numpy()


def score(splits: DataSplits, embed: Callable[[InMemoryImages], np.ndarray]) -> dict[str, float]:
    query = embed(splits.query)  # type: ignore[arg-type]
    gallery = None if splits.gallery is None else embed(splits.gallery)  # type: ignore[arg-type]
    result = evaluate_retrieval(
        query,
        splits.query.labels.numpy(),
        gallery,
        None if splits.gallery is None else splits.gallery.labels.numpy(),
        metrics=list(METRICS),
    )
    return {name: float(result.metrics[name]) for name in METRICS}


def run_founding(
    splits: DataSplits, epochs: int, seed: int, data_path: str, max_steps: int | None
) -> list[Point]:
    """The founding loop; data_path 'per-image' (as founded) or 'tensor' (in-memory batches)."""
    torch.manual_seed(seed)
    model = FoundingNetwork()
    loss_function = losses.CircleLoss(m=0.4, gamma=80)
    optimizer = torch.optim.Adam(model.parameters(), lr=FOUNDING_LR)
    train = splits.train
    assert isinstance(train, InMemoryImages)
    generator = torch.Generator().manual_seed(seed)
    points: list[Point] = []
    elapsed = 0.0
    model.train()
    for epoch in range(epochs):
        if data_path == "per-image":
            batches: Iterator = iter(
                DataLoader(
                    PerImageDataset(train), batch_size=FOUNDING_BATCH, shuffle=True, generator=generator
                )
            )
        else:
            batches = tensor_batches(train, FOUNDING_BATCH, generator)
        seen = 0
        started = time.perf_counter()
        for step, (images, labels) in enumerate(batches):
            if max_steps is not None and step == max_steps:
                break
            optimizer.zero_grad()
            loss = loss_function(model(images), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        seconds = time.perf_counter() - started
        elapsed += seconds
        if max_steps is not None:
            points.append(Point(epoch, elapsed, seen / seconds, float("nan"), float("nan")))
            continue
        values = score(splits, lambda images: _embed_founding(model, images))
        points.append(Point(epoch, elapsed, seen / seconds, **values))
        print(f"  founding epoch {epoch}: {elapsed:.1f} s, {seen / seconds:.0f} img/s, {values}", flush=True)
    return points


def run_embedlab(config: Path, out: Path, overrides: list[str]) -> list[Point]:
    """`embedlab train` as a user runs it; the curve comes from the run's metrics.csv."""
    command = [
        str(Path(sys.executable).with_name("embedlab")),
        "train",
        str(config),
        "--out",
        str(out),
        "--force",
        *[part for item in overrides for part in ("--set", item)],
    ]
    print("  $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    with (out / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["stage"] == "train"]
    return [
        Point(
            # metrics.csv counts epochs trained; this bench numbers both workflows' epochs from 0
            int(row["epoch"]) - 1,
            float(row["train_seconds"]),
            float(row["images_per_second"]),
            float(row["precision_at_1"]) if row["precision_at_1"] else float("nan"),
            float(row["map_at_r"]) if row.get("map_at_r") else float("nan"),
        )
        for row in rows
    ]


PROTOCOLS: dict[str, list[str]] = {
    "closed": ["data.validation.split=predefined", "data.gallery=train"],
    "open": ["data.validation.split=classes", "data.validation.fraction=0.4", "data.gallery=validation"],
}


def protocol_splits(protocol: str) -> DataSplits:
    """The protocol's data, from the same settings the embedlab runs get."""
    cfg, _ = load_config(FOUNDING_CONFIG, PROTOCOLS[protocol])
    return prepare_data(cfg.data)


def measure_throughput(splits: DataSplits, args: argparse.Namespace) -> dict[str, float]:
    """Images per second of the founding loop, the same loop fed tensor batches, and `embedlab train`
    with the founding network, loss, batch and optimiser; two rounds, interleaved, medians."""
    rates: dict[str, list[float]] = {
        "founding loop": [],
        "same loop, tensor batches": [],
        "embedlab train": [],
    }
    for round_ in range(2):
        for data_path, name in (("per-image", "founding loop"), ("tensor", "same loop, tensor batches")):
            point = run_founding(splits, 1, args.seed, data_path, args.throughput_steps)[0]
            rates[name].append(point.images_per_second)
        run = run_embedlab(
            FOUNDING_CONFIG,
            args.out / f"embedlab_founding_network_{round_}",
            [
                *PROTOCOLS[args.protocol],
                "train.epochs=1",
                f"train.max_steps_per_epoch={args.throughput_steps}",
                "train.metrics=[precision_at_1]",
                "train.monitor=precision_at_1",
            ],
        )
        rates["embedlab train"].append(run[0].images_per_second)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        **medians,
        "ratio": medians["embedlab train"] / medians["founding loop"],
        "ratio_vs_tensor_loop": medians["embedlab train"] / medians["same loop, tensor batches"],
    }


def first_reaching(points: list[Point], target: float) -> Point | None:
    return next((p for p in points if p.precision_at_1 >= target), None)


def last_within(points: list[Point], budget: float) -> Point | None:
    within = [p for p in points if p.train_seconds <= budget and not np.isnan(p.precision_at_1)]
    return within[-1] if within else None


def print_curve(name: str, points: list[Point]) -> None:
    print(f"\n{name}")
    print(f"{'epoch':>5} {'train s':>8} {'img/s':>7} {'P@1':>7} {'MAP@R':>7}")
    for p in points:
        print(
            f"{p.epoch:>5} {p.train_seconds:>8.1f} {p.images_per_second:>7.0f} "
            f"{p.precision_at_1:>7.4f} {p.map_at_r:>7.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results.json")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="closed")
    parser.add_argument("--founding-epochs", type=int, default=10)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--recipe-set", action="append", default=[], help="KEY=VALUE for the recipe run")
    parser.add_argument(
        "--throughput-steps", type=int, default=600, help="steps of each throughput measurement (batch 32)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splits = protocol_splits(args.protocol)
    print(f"protocol {args.protocol}: {splits.record}", flush=True)

    throughput: dict[str, float] = {}
    if args.throughput_steps:
        print("\nthroughput, batch 32, the founding network (training steps only)", flush=True)
        throughput = measure_throughput(splits, args)
        for name in ("founding loop", "same loop, tensor batches", "embedlab train"):
            print(f"  {name:<28} {throughput[name]:8.0f} images/s")

    print(f"\nfounding workflow, {args.founding_epochs} epochs", flush=True)
    founding = run_founding(splits, args.founding_epochs, args.seed, "per-image", None)
    budget = founding[-1].train_seconds
    print("\nembedlab with the recipe", flush=True)
    recipe = run_embedlab(
        args.recipe, args.out / "embedlab_recipe", [*PROTOCOLS[args.protocol], *args.recipe_set]
    )

    print_curve("founding workflow", founding)
    print_curve(f"embedlab recipe ({args.recipe.name})", recipe)
    final = founding[-1]
    reached = first_reaching(recipe, final.precision_at_1)
    at_budget = last_within(recipe, budget)
    summary = {
        "protocol": args.protocol,
        "founding_final": asdict(final),
        "founding_train_seconds": budget,
        "recipe_reaches_founding_p1_at_seconds": reached.train_seconds if reached else None,
        "time_fraction": reached.train_seconds / budget if reached else None,
        "recipe_at_founding_time": asdict(at_budget) if at_budget else None,
        "throughput": throughput,
        "founding_curve": [asdict(p) for p in founding],
        "recipe_curve": [asdict(p) for p in recipe],
    }
    print(
        f"\nfounding final (epoch {final.epoch}, {budget:.1f} s): "
        f"P@1 {final.precision_at_1:.4f}, MAP@R {final.map_at_r:.4f}"
    )
    if reached:
        print(
            f"recipe reaches P@1 {final.precision_at_1:.4f} after {reached.train_seconds:.1f} s = "
            f"{reached.train_seconds / budget:.3f} of the founding time (target <= 0.25)"
        )
    else:
        print("recipe never reaches the founding final P@1")
    if at_budget:
        gain_p1 = 100 * (at_budget.precision_at_1 - final.precision_at_1)
        gain_map = 100 * (at_budget.map_at_r - final.map_at_r)
        print(
            f"recipe at the founding time (epoch {at_budget.epoch}, {at_budget.train_seconds:.1f} s): "
            f"P@1 {at_budget.precision_at_1:.4f} ({gain_p1:+.2f} points, target +1.5), "
            f"MAP@R {at_budget.map_at_r:.4f} ({gain_map:+.2f} points, target +5)"
        )
    if throughput:
        print(
            f"throughput ratio embedlab / founding loop: {throughput['ratio']:.3f} (target >= 0.9); "
            f"against the same loop fed tensor batches: {throughput['ratio_vs_tensor_loop']:.3f}"
        )
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
