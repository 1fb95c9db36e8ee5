"""Embedding on the GPU against the CPU: throughput and agreement, for `benchmarks/device_check.sh`.

A timm backbone with GeM pooling and a 512-d neck (random weights: agreement and speed do not depend on
them) embeds the same seeded uint8 images on the CPU and on the GPU through `embedlab.models.inference
.embed`, the function `embed`, `index build` and validation use. Printed: images/s on each device and
the smallest cosine between a CPU vector and its GPU twin for the fp32 model (target at least 0.999),
then the same on the GPU under bf16 autocast (a bf16-mixed run).

Usage:
    python benchmarks/gpu_embedding.py                                   # ResNet-50, 224 px, 2,048 images
    python benchmarks/gpu_embedding.py --backbone resnet18 --image-size 32 --images 64 --device cpu
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from embedlab.config import ModelConfig
from embedlab.data.images import InMemoryImages
from embedlab.models import build_embedder
from embedlab.models.devices import resolve_device
from embedlab.models.inference import embed


def _timed_embed(embedder: torch.nn.Module, images: InMemoryImages, batch: int, precision: str):
    device = next(embedder.parameters()).device
    embed(embedder, images.subset(torch.arange(min(batch, len(images)))), batch, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    vectors = embed(embedder, images, batch, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return vectors, len(images) / (time.perf_counter() - began)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--cpu-images", type=int, default=256, help="the CPU embeds only the first N")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(backbone=args.backbone, pooling="gem", embedding_dim=512)
    embedder = build_embedder(config, channels=3, image_size=args.image_size).eval()
    size = args.image_size
    pixels = torch.randint(0, 256, (args.images, 3, size, size), generator=torch.Generator().manual_seed(0))
    images = InMemoryImages(labels=torch.zeros(args.images, dtype=torch.long), images=pixels.to(torch.uint8))
    few = images.subset(torch.arange(min(args.cpu_images, args.images)))
    cpu_vectors, cpu_rate = _timed_embed(embedder, few, args.batch_size, "32-true")
    print(f"{args.backbone} {size} px, 512-d: cpu {cpu_rate:.1f} images/s ({len(few)} images)")
    embedder.to(device)
    for precision in ("32-true", "bf16-mixed"):
        vectors, rate = _timed_embed(embedder, images, args.batch_size, precision)
        agreement = _min_cosine(cpu_vectors, vectors[: len(few)])
        print(
            f"{device} {precision}: {rate:.1f} images/s ({args.images} images, batch {args.batch_size}); "
            f"{rate / cpu_rate:.1f}x the cpu; min cosine to the cpu's fp32 vectors {agreement:.6f}"
        )


if __name__ == "__main__":
    main()
