"""Load a local weights file into a backbone: by name where the keys agree, else by position.

Air-gapped users bring checkpoints whose key names differ from timm's (torchvision's MobileNetV2 file
for timm's `mobilenetv2_100`, `efficientnet_pytorch` names for `tf_efficientnet_lite0`). When the names
do not match but the tensors come in the same order with the same shapes, they are matched by position.
Classifier tensors the backbone does not have are skipped; anything else that does not fit is an error
that lists it. What was loaded is logged at INFO in one line ("loaded 100 of 100 tensors by name from
FILE"), which `embedlab train` prints.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedWeights:
    """What `load_local_weights` copied: `loaded` of the model's `total` tensors (batch-norm counters
    aside), matched `by` name or position, from `path`; `unused` tensors of the file had no place in the
    model (a classifier the backbone lacks, say)."""

    path: Path
    by: Literal["name", "position"]
    loaded: int
    total: int
    unused: int = 0

    def __str__(self) -> str:
        line = f"loaded {self.loaded} of {self.total} tensors by {self.by} from {self.path}"
        if self.unused:
            line += f" (left out {self.unused} file tensor{'s' if self.unused > 1 else ''} the model lacks)"
        return line


def load_torch_file(path: Path, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True; a file it refuses (a pickle that would run code, a torn or
    foreign file) is a ValueError naming it, not a traceback from deep inside torch."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{what} {path} cannot be loaded safely (weights_only=True): {reason}. embedlab loads only "
            "tensors and plain containers; re-save it as a state dict (torch.save(model.state_dict()))"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt/.ckpt (loaded with weights_only=True) or a .safetensors file."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = load_torch_file(path, "weights file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and key in loaded and isinstance(loaded[key], Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"weights file {path} holds a {type(loaded).__name__}, not a state dict")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _without_batchnorm_counters(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_local_weights(model: nn.Module, path: str | Path) -> LoadedWeights:
    """Copy the file's tensors into `model`, by name or else by position; logs and returns what it did."""
    path = Path(path)
    source = _without_batchnorm_counters(read_state_dict(path))
    target = _without_batchnorm_counters(model.state_dict())
    loaded = _copy_tensors(model, source, target, path)
    LOGGER.info("%s", loaded)
    return loaded


def _copy_tensors(
    model: nn.Module, source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], path: Path
) -> LoadedWeights:
    if all(k in source and source[k].shape == v.shape for k, v in target.items()):
        model.load_state_dict({k: source[k] for k in target}, strict=False)
        return LoadedWeights(path, "name", len(target), len(target), len(source) - len(target))
    source_items = list(source.items())
    target_items = list(target.items())
    # A checkpoint of the full classifier model carries trailing head tensors the backbone lacks.
    if len(source_items) >= len(target_items):
        pairs = list(zip(target_items, source_items[: len(target_items)], strict=True))
        mismatched = [(t, s) for t, s in pairs if t[1].shape != s[1].shape]
        if not mismatched:
            model.load_state_dict({t[0]: s[1] for t, s in pairs}, strict=False)
            unused = len(source_items) - len(target_items)
            return LoadedWeights(path, "position", len(pairs), len(target_items), unused)
    missing = [k for k in target if k not in source]
    wrong_shape = [
        f"{k}: model {tuple(v.shape)} vs file {tuple(source[k].shape)}"
        for k, v in target.items()
        if k in source and source[k].shape != v.shape
    ]
    raise ValueError(
        f"weights file {path} does not fit the model: {len(missing)} of {len(target)} model tensors are "
        f"missing by name (first: {', '.join(missing[:5]) or '-'}); shape mismatches: "
        f"{'; '.join(wrong_shape[:5]) or '-'}; and matching by position failed "
        f"({len(source_items)} tensors in the file, {len(target_items)} in the model)"
    )
