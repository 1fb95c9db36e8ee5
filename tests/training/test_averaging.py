"""The moving average of the weights: its update rule, and a real run that validates, checkpoints and
resumes with it."""

from __future__ import annotations

import csv

import pytest
import torch

from embedlab.config import ConfigError, load_config
from embedlab.pipelines.evaluate import evaluate_run
from embedlab.training.averaging import exponential_moving_average, warmed_up_decay
from embedlab.training.fit import fit

DIGITS = [
    "data.dataset=digits",
    "data.validation.split=images",
    "model.embedding_dim=16",
    "train.batch_size=32",
    "train.max_steps_per_epoch=6",
    "train.threads=1",
    "optimizer.lr=0.01",
    "scheduler.name=constant",
    "train.ema_decay=0.9",
    "train.metrics=[precision_at_1, map_at_r]",
    "loss={name: CosFaceLoss, margin: 0.35, scale: 32}",
]


def test_decay_warms_up_to_the_configured_value() -> None:
    assert warmed_up_decay(0.998, 0) == pytest.approx(0.1)
    assert warmed_up_decay(0.998, 10) == pytest.approx(11 / 20)
    assert warmed_up_decay(0.998, 100_000) == 0.998


def test_update_moves_floats_towards_the_current_weights_and_copies_counters() -> None:
    update = exponential_moving_average(0.5)
    averaged, current = [torch.zeros(3), torch.full((2,), 4.0)], [torch.ones(3), torch.zeros(2)]
    update(averaged, current, torch.tensor(100))
    assert torch.equal(averaged[0], torch.full((3,), 0.5))
    assert torch.equal(averaged[1], torch.full((2,), 2.0))
    update(averaged, current, torch.tensor(0))  # warm-up: decay 0.1, so 90% of the way
    assert torch.allclose(averaged[0], torch.full((3,), 0.95))
    counters = [torch.tensor(3)]
    update(counters, [torch.tensor(7)], torch.tensor(100))
    assert counters[0].item() == 7


@pytest.mark.parametrize("decay", ["0", "1", "1.5"])
def test_a_decay_outside_zero_one_is_refused_by_the_config(decay: str) -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(None, [f"train.ema_decay={decay}"])


def _state(path) -> dict[str, dict[str, torch.Tensor]]:
    checkpoint = torch.load(path, weights_only=True)
    return {"average": checkpoint["state_dict"], "raw": checkpoint["current_model_state"]}


def test_validation_and_checkpoints_use_the_average_and_the_raw_weights_are_kept(tmp_path) -> None:
    cfg, _ = load_config(None, [*DIGITS, "train.epochs=2"])
    result = fit(cfg, tmp_path / "run", progress=False)
    state = _state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["average"].keys() == state["raw"].keys()
    kernel = next(name for name in state["raw"] if name.startswith("embedder.backbone"))
    assert not torch.allclose(state["average"][kernel], state["raw"][kernel])

    # The last epoch's logged metrics are those of the averaged weights the checkpoint holds ...
    rescored = evaluate_run(tmp_path / "run", which="last").metrics
    assert rescored == pytest.approx(result.metrics, abs=1e-6)
    # ... and not those of the raw weights.
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"] = checkpoint["current_model_state"]
    torch.save(checkpoint, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert evaluate_run(tmp_path / "run", which="last").metrics["map_at_r"] != pytest.approx(
        result.metrics["map_at_r"], abs=1e-6
    )


def test_a_resumed_run_continues_both_the_average_and_the_raw_weights(tmp_path) -> None:
    two_epochs, _ = load_config(None, [*DIGITS, "train.epochs=2"])
    fit(two_epochs, tmp_path / "whole", progress=False)
    one_epoch, _ = load_config(None, [*DIGITS, "train.epochs=1"])
    fit(one_epoch, tmp_path / "resumed", progress=False)
    fit(two_epochs, tmp_path / "resumed", resume=True, progress=False)

    whole = _state(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    resumed = _state(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for kind in ("average", "raw"):
        for name, tensor in whole[kind].items():
            assert torch.allclose(resumed[kind][name].float(), tensor.float(), atol=1e-6), (kind, name)
    with (tmp_path / "resumed" / "metrics.csv").open() as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1", "2"]
