"""Benchmark: training throughput of embedlab's `fit` against a plain PyTorch AMP loop of the same model.

Both train the very same embedder (embedlab's build_embedder: a timm backbone with random weights, GeM
pooling, the BN neck, a 512-d L2-normalised embedding) with embedlab's ArcFace head
(AdaptiveMarginArcFaceLoss with one margin, 0.5 rad, scale 30), AdamW at 1e-3, on the same synthetic
in-memory images (`data.dataset=synthetic:N:C`, seeded uint8 noise, so decoding is not what is
measured), in bf16 autocast and channels-last by default, batch 128 of 224 px.

- plain: a loop over a DataLoader of the same dataset (pinned memory on CUDA), `--warmup-steps`
  untimed steps, then `--steps` timed ones between two CUDA synchronisations.
- embedlab: `fit` for two epochs of `--steps` steps each; epoch 1 is the warm-up, and the figure is
  epoch 2's images/s from metrics.csv (embedlab times an epoch from its start to its last step, after
  a device synchronisation, leaving validation and checkpoints out).

Printed side by side: images/s of each and the ratio embedlab / plain (target at least 0.95). Nothing
is asserted. Needs torch, torchvision, lightning, timm, numba, typer, rich, PyYAML, pydantic,
pytorch-metric-learning and faiss; about a minute on one recent GPU with the defaults.

Usage:
    python benchmarks/gpu_training.py                                    # CUDA, ResNet-50, 224 px
    python benchmarks/gpu_training.py --compile                           # both with torch.compile
    python benchmarks/gpu_training.py --device cpu --backbone resnet18 --image-size 32 --batch-size 16 \\
        --steps 3                                                         # a smoke check on a CPU
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from embedlab.config import ExperimentConfig, load_config, parse_synthetic_dataset
from embedlab.data.builtin import make_synthetic
from embedlab.losses import AdaptiveMarginArcFaceLoss
from embedlab.models.embedder import build_embedder
from embedlab.training.fit import fit

CLASSES = 64
#: Share of every class's images held out for embedlab's validation (never in the timed steps).
VALIDATION_FRACTION = 0.1
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--backbone", default="resnet50", help="a timm model name (random weights)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60, help="timed steps of each")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps of the plain loop first")
    parser.add_argument("--precision", choices=["bf16-mixed", "16-mixed", "32-true"], default="bf16-mixed")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the contiguous layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile the embedder in both")
    parser.add_argument("--out", type=Path, default=None, help="folder for embedlab's run (default: a temp)")
    return parser.parse_args()


def experiment(args: argparse.Namespace) -> ExperimentConfig:
    """embedlab's config of the benchmark; the plain loop builds its model and data from it too."""
    # Enough training images for `steps` batches after the validation share is held out, and two
    # validation images of every class at least, so that each query has a positive.
    images = max(
        math.ceil(args.steps * args.batch_size / (1 - VALIDATION_FRACTION)) + 2 * CLASSES,
        math.ceil(2 * CLASSES / VALIDATION_FRACTION),
    )
    cfg, _ = load_config(
        None,
        [
            f"data.dataset=synthetic:{images}:{CLASSES}",
            f"data.image_size={args.image_size}",
            "data.channels=3",
            "data.validation.split=images",
            f"data.validation.fraction={VALIDATION_FRACTION}",
            f"model.backbone={args.backbone}",
            "model.pretrained=false",
            "model.pooling=gem",
            f"model.embedding_dim={args.embedding_dim}",
            "loss={name: AdaptiveMarginArcFaceLoss, margin_min: 0.5, margin_max: 0.5, scale: 30.0}",
            "optimizer.name=adamw",
            "optimizer.lr=0.001",
            "scheduler.name=constant",
            f"train.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
            f"train.batch_size={args.batch_size}",
            "train.epochs=2",
            f"train.max_steps_per_epoch={args.steps}",
            "train.eval_every_n_epochs=2",
            f"train.precision={args.precision}",
            f"train.channels_last={'false' if args.no_channels_last else 'true'}",
            f"train.compile={'true' if args.compile else 'false'}",
        ],
    )
    return cfg


def plain_loop_images_per_second(cfg: ExperimentConfig, args: argparse.Namespace) -> float:
    """The same model, head, optimiser and data in a hand-written AMP loop."""
    device = torch.device(args.device)
    spec = parse_synthetic_dataset(cfg.data.dataset)
    assert spec is not None and cfg.data.image_size is not None
    dataset = make_synthetic(spec, cfg.data.image_size, 3).train
    torch.manual_seed(0)
    embedder = build_embedder(cfg.model, 3, cfg.data.image_size).to(device)
    if not args.no_channels_last:
        embedder = embedder.to(memory_format=torch.channels_last)
    if args.compile:
        embedder.compile()
    head = AdaptiveMarginArcFaceLoss(CLASSES, args.embedding_dim, 0.5, 0.5, scale=30.0).to(device)
    optimizer = torch.optim.AdamW([*embedder.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4)
    dtype = AUTOCAST_DTYPES.get(args.precision)
    scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "16-mixed")
    batches = BatchSampler(RandomSampler(dataset), args.batch_size, drop_last=True)
    loader = DataLoader(dataset, sampler=batches, batch_size=None, pin_memory=device.type == "cuda")

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    embedder.train()
    started = 0.0
    total = args.warmup_steps + args.steps
    for step, (images, labels) in enumerate(loader):
        if step == args.warmup_steps:
            synchronize()
            started = time.perf_counter()
        if step == total:
            break
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = head(embedder(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - started)


def embedlab_images_per_second(cfg: ExperimentConfig, out: Path) -> float:
    """embedlab's fit; images/s of its second epoch (the first is the warm-up)."""
    fit(cfg, out, force=True, progress=False)
    with (out / "metrics.csv").open() as stream:
        rows = [row for row in csv.DictReader(stream) if row["stage"] == "train"]
    return float(rows[1]["images_per_second"])


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device; use --device cpu for a smoke check")
    cfg = experiment(args)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    layout = "contiguous" if args.no_channels_last else "channels-last"
    print(
        f"{where}, torch {torch.__version__}: {args.backbone}, GeM, {args.embedding_dim}-d, ArcFace, "
        f"batch {args.batch_size} of {args.image_size} px, {args.precision}, "
        f"{layout}{', compiled' if args.compile else ''}; "
        f"{args.steps} timed steps each"
    )
    plain = plain_loop_images_per_second(cfg, args)
    if args.out is None:
        with tempfile.TemporaryDirectory() as folder:
            ours = embedlab_images_per_second(cfg, Path(folder) / "run")
    else:
        ours = embedlab_images_per_second(cfg, args.out)
    print(f"{'':24}{'images/s':>12}")
    print(f"{'plain PyTorch AMP loop':24}{plain:12.1f}")
    print(f"{'embedlab fit':24}{ours:12.1f}")
    print(f"ratio embedlab / plain: {ours / plain:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
