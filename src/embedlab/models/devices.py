"""Which torch device a command embeds on (`--device auto|cpu|cuda|cuda:N`), and the autocast a run's
training precision implies for inference."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
InferencePrecision = Literal["32-true", "16-mixed", "bf16-mixed"]
_AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def what_torch_sees() -> str:
    """One phrase on CUDA as this torch build sees it, for errors about a missing GPU."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees "
        f"torch.cuda.device_count()={torch.cuda.device_count()}"
    )


def resolve_device(name: str = "auto", option: str = "--device") -> torch.device:
    """ "auto": the first GPU when torch sees one, else the CPU; "cpu"; "cuda" or "cuda:N", which must
    exist. `option` names the flag or key in the errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option} {name!r}: expected one of {', '.join(DEVICE_CHOICES)}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {name!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name}, but {what_torch_sees()}; use {option} auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{option} {name}, but torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return device


def inference_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for embedding on `device` as a run trained in `precision` ("16-mixed", "bf16-mixed");
    none for "32-true", so an fp32 model embeds in fp32 on every device."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
