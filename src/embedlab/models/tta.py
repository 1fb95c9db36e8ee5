"""Test-time augmentation: each image embedded in several views (a horizontal flip, other input sizes);
the views' embeddings are averaged before the L2 normalisation, then normalised once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embedlab.models.embedder import Embedder
from embedlab.models.pooling import Flatten


@dataclass(frozen=True)
class TestTimeAugmentation:
    """flip: also embed the left-right mirror image. scales: input sizes as multiples of the trained
    size (1.0 is the trained size; multi-scale needs a pooling that takes any size: gem, avg or max)."""

    # Not a test class, despite its name.
    __test__ = False

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.scales or any(not (s > 0 and math.isfinite(s)) for s in self.scales):
            raise ValueError(f"test-time scales must be positive numbers, got {list(self.scales)}.")

    @property
    def n_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def label(self) -> str:
        parts = (["flip"] if self.flip else []) + (
            [f"scales {','.join(f'{s:g}' for s in self.scales)}"] if self.scales != (1.0,) else []
        )
        return " + ".join(parts) or "none"

    @classmethod
    def parse(cls, specs: Sequence[str]) -> TestTimeAugmentation:
        """From the command line: "flip" and/or "scales:S1,S2,..." (e.g. ["flip", "scales:1,1.25"])."""
        flip, scales = False, (1.0,)
        for spec in specs:
            name, _, value = spec.partition(":")
            if name == "flip" and not value:
                flip = True
            elif name == "scales" and value:
                try:
                    scales = tuple(float(v) for v in value.split(","))
                except ValueError:
                    raise ValueError(f"--tta {spec!r}: scales must be numbers, e.g. scales:1,1.25") from None
            else:
                raise ValueError(
                    f"--tta {spec!r} is not known; use flip or scales:S1,S2,... (e.g. scales:1,1.25)"
                )
        return cls(flip=flip, scales=scales)


def check_supports(embedder: Embedder, tta: TestTimeAugmentation) -> None:
    """Multi-scale views change the feature map size, which a flattening pooling cannot take."""
    if tta.scales != (1.0,) and isinstance(embedder.pooling, Flatten):
        raise ValueError(
            "multi-scale test-time augmentation needs a pooling that accepts any input size (gem, avg or "
            "max); this model flattens its feature map. Use --tta flip alone."
        )


def embed_views(embedder: Embedder, images: torch.Tensor, tta: TestTimeAugmentation) -> torch.Tensor:
    """Unit embeddings (B, D) of raw images (B, C, H, W): the mean of every view's un-normalised output."""
    size = embedder.preprocess.size
    total: torch.Tensor | None = None
    for scale in tta.scales:
        side = max(1, round(scale * size))
        for view in (images, images.flip(-1)) if tta.flip else (images,):
            output = embedder.unnormalised(view, side)
            total = output if total is None else total + output
    assert total is not None
    return F.normalize(total / tta.n_views, dim=-1)
