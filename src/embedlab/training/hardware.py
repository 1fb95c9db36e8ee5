"""The machine a run trains on: CPU or CUDA GPU, precision, the DDP backend, a compiled embedder.

Everything here is decided in `fit` after the config was read (the config itself never imports torch)
and before the run folder is written, so a run the machine cannot do leaves no folder behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from embedlab.config import TrainConfig

Accelerator = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class TrainingHardware:
    """What the run trains on: `accelerator` resolved from train.accelerator (auto made concrete) and
    the Lightning precision it runs in."""

    accelerator: Accelerator
    precision: str

    @property
    def lightning_accelerator(self) -> str:
        # "cuda" rather than Lightning's "gpu", which would also take Apple's MPS: gpu means CUDA here.
        return "cuda" if self.accelerator == "gpu" else "cpu"

    @property
    def on_cuda(self) -> bool:
        return self.accelerator == "gpu"


def describe_cuda() -> str:
    """What torch knows of CUDA, for errors: its version, the CUDA it was built with, the devices seen."""
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
    return f"torch {torch.__version__}, {built}, torch.cuda.device_count()={torch.cuda.device_count()}"


def resolve_hardware(train: TrainConfig, devices_per_node: int) -> TrainingHardware:
    """The accelerator and precision of this run; a ValueError naming the key when the machine cannot
    do what the config asks (a GPU that torch does not see, more processes than GPUs, float16 autocast
    on the CPU)."""
    cuda_seen = torch.cuda.is_available()
    if train.accelerator == "gpu" and not cuda_seen:
        raise ValueError(
            f"train.accelerator=gpu, but torch sees no CUDA device ({describe_cuda()}); install a CUDA "
            "build of torch, check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or set "
            "train.accelerator=auto or cpu"
        )
    accelerator: Accelerator = "gpu" if train.accelerator != "cpu" and cuda_seen else "cpu"
    if accelerator == "gpu" and devices_per_node > torch.cuda.device_count():
        raise ValueError(
            f"{devices_per_node} training processes per node (train.devices or --devices) need as many "
            f"CUDA devices, and torch sees {torch.cuda.device_count()} ({describe_cuda()})"
        )
    if train.precision == "16-mixed" and accelerator == "cpu":
        # Lightning would swap in bf16-mixed with a warning; a run should train in the precision it records.
        raise ValueError(
            f"train.precision=16-mixed (float16 with a gradient scaler) needs a CUDA GPU, and this run "
            f"trains on the CPU (train.accelerator={train.accelerator}; {describe_cuda()}); on the CPU "
            "use train.precision=bf16-mixed or 32-true"
        )
    return TrainingHardware(accelerator=accelerator, precision=train.precision)


def ddp_strategy(hardware: TrainingHardware, *, some_parameters_frozen: bool = False) -> DDPStrategy:
    """DDP with NCCL between CUDA processes (collectives on the GPUs, over NVLink or InfiniBand where
    present) and gloo between CPU processes; Lightning would choose the same from the device, it is
    named here so that the choice is visible and tested. `some_parameters_frozen`: parameters stop
    receiving gradients for some epochs (train.freeze_backbone_epochs), which DDP must be told of."""
    return DDPStrategy(
        process_group_backend="nccl" if hardware.on_cuda else "gloo",
        find_unused_parameters=some_parameters_frozen,
    )


def compile_embedder(embedder: nn.Module, backend: str) -> None:
    """torch.compile the embedder's forward in place (`nn.Module.compile`): its parameters and state
    dict keys stay the module's own (no `_orig_mod.` prefix), so checkpoints load into an uncompiled
    embedder. A backend torch does not know is a ValueError that lists those it does."""
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(
            f"train.compile_backend={backend!r} is not a torch.compile backend; torch knows "
            f"{', '.join(sorted(known))}"
        )
    embedder.compile(backend=backend)
