"""Which device exact search and evaluation compute on: "auto", "cpu", "cuda" or "cuda:N".

"cpu" is the numpy engine. "auto" picks CUDA when torch sees a GPU, and decides without importing torch
on a machine that has no NVIDIA device (importing torch takes seconds, and commands that score .npy
files never need it otherwise). A torch.device object picks the torch engine on that very device,
torch.device("cpu") included: that is how the tests run the GPU code path on a machine without a GPU.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

_CUDA_NAME = re.compile(r"cuda(:\d+)?")
# Where the NVIDIA driver shows its devices; both are absent on a machine without one.
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_NVIDIA_DEVICE = Path("/dev/nvidia0")


def nvidia_device_present() -> bool:
    """Whether the NVIDIA driver lists a device, read from the file system (no torch import)."""
    try:
        if _NVIDIA_GPUS.is_dir() and any(_NVIDIA_GPUS.iterdir()):
            return True
    except OSError:
        pass
    return os.path.exists(_NVIDIA_DEVICE)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _check_cuda(device: str, option: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"{option}={device!r} asks for a GPU, but torch sees none (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}, torch.cuda.is_available() is False); "
            f"use {option}='cpu' or 'auto'."
        )
    number = int(device.partition(":")[2] or 0)
    if number >= torch.cuda.device_count():
        raise ValueError(
            f"{option}={device!r} asks for GPU {number}, but torch sees {torch.cuda.device_count()} "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
        )


def resolve_device(device: Any, option: str = "device") -> str | None:
    """The torch device to compute on ("cuda", "cuda:1", "cpu" for a torch.device("cpu")), or None for
    the numpy engine. option: the name of the argument or flag, for error messages.

    Raises ValueError for an unknown choice, and for "cuda"/"cuda:N" where torch sees no such GPU.
    """
    if not isinstance(device, str):
        if type(device).__module__ == "torch" and type(device).__name__ == "device":
            if device.type == "cuda":
                _check_cuda(str(device), option)
            return str(device)
        raise ValueError(f"{option} must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}.")
    if device == "cpu":
        return None
    if device == "auto":
        if "torch" in sys.modules or nvidia_device_present():
            return "cuda" if _cuda_available() else None
        return None
    if _CUDA_NAME.fullmatch(device):
        _check_cuda(device, option)
        return device
    raise ValueError(f"{option} must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}.")
