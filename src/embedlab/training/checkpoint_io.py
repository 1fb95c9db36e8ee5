"""Checkpoints written atomically (embedlab.atomic): a crash or a kill mid-write leaves the previous
checkpoint in place and loadable, never a torn file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from embedlab.atomic import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda stream: torch.save(obj, stream))


class AtomicCheckpointIO(TorchCheckpointIO):
    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        atomic_torch_save(checkpoint, path)
