"""Choosing the device a command embeds on, and the autocast of a run's precision (no GPU here)."""

from __future__ import annotations

import pytest
import torch

from embedlab.models.devices import inference_autocast, resolve_device


def test_auto_is_the_cpu_when_torch_sees_no_gpu() -> None:
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_gpu_asked_for_without_one_names_the_option_and_what_torch_sees(name: str) -> None:
    with pytest.raises(
        ValueError, match=rf"--device {name}, but torch .* use --device auto or cpu"
    ) as raised:
        resolve_device(name)
    assert torch.__version__ in str(raised.value)


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x"])
def test_an_unknown_device_lists_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda, cuda:N"):
        resolve_device(name, option="device")


def test_mixed_precision_runs_embed_under_their_autocast_and_fp32_runs_without() -> None:
    layer = torch.nn.Linear(4, 4)
    inputs = torch.rand(2, 4)
    with inference_autocast(torch.device("cpu"), "bf16-mixed"):
        assert layer(inputs).dtype == torch.bfloat16
    with inference_autocast(torch.device("cpu"), "32-true"):
        assert layer(inputs).dtype == torch.float32
