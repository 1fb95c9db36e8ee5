"""The machine a run trains on: accelerator and precision from the config and what torch sees, the
DDP backend, and a compiled embedder whose checkpoints load into an uncompiled one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embedlab.config import TrainConfig
from embedlab.training import hardware
from embedlab.training.hardware import (
    TrainingHardware,
    compile_embedder,
    ddp_strategy,
    describe_cuda,
    resolve_hardware,
)


def _sees_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(hardware.torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [("auto", 0, "cpu"), ("auto", 2, "gpu"), ("cpu", 2, "cpu"), ("gpu", 1, "gpu")],
)
def test_the_accelerator_follows_the_config_and_what_torch_sees(
    monkeypatch: pytest.MonkeyPatch, requested: str, gpus: int, expected: str
) -> None:
    _sees_gpus(monkeypatch, gpus)
    chosen = resolve_hardware(TrainConfig(accelerator=requested), devices_per_node=1)
    assert chosen.accelerator == expected
    assert chosen.lightning_accelerator == {"cpu": "cpu", "gpu": "cuda"}[expected]


def test_gpu_without_a_cuda_device_names_the_key_and_what_torch_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    _sees_gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=r"train.accelerator=gpu, but torch sees no CUDA device") as error:
        resolve_hardware(TrainConfig(accelerator="gpu"), devices_per_node=1)
    assert f"torch {torch.__version__}" in str(error.value)
    assert "torch.cuda.device_count()=0" in str(error.value)


def test_more_processes_per_node_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _sees_gpus(monkeypatch, 2)
    with pytest.raises(ValueError, match=r"4 training processes per node .* torch sees 2"):
        resolve_hardware(TrainConfig(), devices_per_node=4)
    # on the CPU, processes are not bound to devices
    assert resolve_hardware(TrainConfig(accelerator="cpu"), devices_per_node=4).accelerator == "cpu"


def test_float16_autocast_on_the_cpu_is_refused_with_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    _sees_gpus(monkeypatch, 0)
    with pytest.raises(
        ValueError, match=r"train.precision=16-mixed .* use train.precision=bf16-mixed or 32-true"
    ):
        resolve_hardware(TrainConfig(precision="16-mixed"), devices_per_node=1)
    _sees_gpus(monkeypatch, 1)
    assert resolve_hardware(TrainConfig(precision="16-mixed"), devices_per_node=1).precision == "16-mixed"


def test_describe_cuda_says_how_torch_was_built() -> None:
    text = describe_cuda()
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
    assert built in text and f"torch.cuda.device_count()={torch.cuda.device_count()}" in text


def test_ddp_takes_nccl_between_gpus_and_gloo_between_cpus() -> None:
    assert ddp_strategy(TrainingHardware("gpu", "bf16-mixed")).process_group_backend == "nccl"
    assert ddp_strategy(TrainingHardware("cpu", "32-true")).process_group_backend == "gloo"


def test_a_compiled_embedder_keeps_plain_state_dict_keys_and_computes_the_same() -> None:
    torch.manual_seed(0)
    compiled = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    compile_embedder(compiled, "eager")  # a real torch.compile, with a backend that needs no C++ compiler
    assert compiled._compiled_call_impl is not None
    inputs = torch.randn(5, 4)
    outputs = compiled(inputs)
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    plain.load_state_dict(compiled.state_dict())
    assert torch.allclose(plain(inputs), outputs)


def test_an_unknown_compile_backend_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"train.compile_backend='inductr'.*inductor"):
        compile_embedder(nn.Linear(2, 2), "inductr")
