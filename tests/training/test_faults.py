"""Faults a long run meets: a SIGKILL mid-epoch and mid-checkpoint write, then --resume; a NaN loss.

The killed runs are real `embedlab train` processes that kill themselves with SIGKILL at a chosen
point (so the point is exact, not a race), forked by `start_forked` (tests/conftest.py).
"""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from embedlab.config import load_config
from embedlab.training.fit import fit
from embedlab.training.module import NonFiniteLossError, NonFiniteWeightsError

SETTINGS = [
    "data.dataset=digits",
    "data.validation.split=images",
    "data.m_per_class=4",
    "data.augment.flip=true",
    "model.embedding_dim=16",
    "model.dropout=0.2",
    "train.epochs=3",
    "train.batch_size=32",
    "train.max_steps_per_epoch=6",
    "train.threads=1",
    "loss={name: MultiSimilarityLoss}",
]

# Runs `embedlab train` with ARGV; KILL = (where, epoch) makes the process SIGKILL itself there.
DRIVER = textwrap.dedent(
    """
    import io, os, signal
    from pathlib import Path

    import torch

    from embedlab.cli import app
    from embedlab.training import checkpoint_io
    from embedlab.training.module import EmbeddingModule

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    where, epoch = KILL or (None, None)
    if where == "mid-epoch":
        train_step = EmbeddingModule.training_step

        def step_then_die(self, batch, batch_idx):
            if self.current_epoch == epoch and batch_idx == 3:
                die()
            return train_step(self, batch, batch_idx)

        EmbeddingModule.training_step = step_then_die
    elif where == "checkpoint-write":
        save = checkpoint_io.atomic_torch_save

        def save_half_then_die(checkpoint, path):
            if Path(path).name == "last.ckpt" and checkpoint["epoch"] == epoch:
                data = io.BytesIO()
                torch.save(checkpoint, data)

                def write_half(stream):
                    stream.write(data.getvalue()[: len(data.getvalue()) // 2])
                    stream.flush()
                    die()

                checkpoint_io.atomic_write(path, write_half)
            save(checkpoint, path)

        checkpoint_io.atomic_torch_save = save_half_then_die
    app(ARGV)
    """
)


@pytest.fixture(scope="module")
def run_process(tmp_path_factory, start_forked):
    """run_process(argv, kill=None) -> exit code of `embedlab train ARGV` in a forked process."""
    driver = tmp_path_factory.mktemp("driver") / "driver.py"
    driver.write_text(DRIVER)

    def run(argv: list[str], kill: tuple[str, int] | None = None) -> int | None:
        process = start_forked(driver, ARGV=argv, KILL=kill)
        process.join(timeout=300)
        return process.exitcode

    return run


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as stream:
        return list(csv.DictReader(stream))


def _last_epoch(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"])


def test_a_run_killed_mid_epoch_and_mid_checkpoint_write_resumes_to_the_same_metrics(
    tmp_path, run_process
) -> None:
    _, raw = load_config(None, SETTINGS)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    train = ["train", str(config), "--out"]

    uninterrupted = tmp_path / "uninterrupted"
    assert run_process([*train, str(uninterrupted)]) == 0

    killed = tmp_path / "killed"
    assert run_process([*train, str(killed)], kill=("mid-epoch", 1)) == -9
    assert _last_epoch(killed) == 0 and len(_history(killed)) == 1

    # Resumed from epoch 0, then killed half-way through writing epoch 1's last.ckpt.
    assert run_process([*train, str(killed), "--resume"], kill=("checkpoint-write", 1)) == -9
    assert _last_epoch(killed) == 0  # the previous checkpoint, whole and loadable
    assert list((killed / "checkpoints").glob(".last.ckpt.*.tmp")), "the kill should leave a torn temporary"

    assert run_process([*train, str(killed), "--resume"]) == 0
    assert not list((killed / "checkpoints").glob("*.tmp"))
    resumed, expected = _history(killed), _history(uninterrupted)
    assert [row["epoch"] for row in resumed] == ["0", "1", "2"]
    compared = ["train_loss", *load_config(None, SETTINGS)[0].train.metrics]
    for row, reference in zip(resumed, expected, strict=True):
        for name in compared:
            assert float(row[name]) == pytest.approx(float(reference[name]), abs=1e-6), (row["epoch"], name)
    assert _last_epoch(killed) == _last_epoch(uninterrupted) == 2


class NaNAtStep(torch.nn.Module):
    """Wraps a loss and returns NaN from its `at`-th call on (counting from 0)."""

    def __init__(self, loss: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.loss = loss
        self.at = at
        self.calls = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        value = self.loss(embeddings, labels)
        return value * float("nan") if self.calls > self.at else value


def _with_nan_loss(monkeypatch, at: int) -> None:
    from embedlab.training import fit as fit_module

    build = fit_module.build_objective

    def build_failing(*args, **kwargs):
        objective = build(*args, **kwargs)
        objective.loss = NaNAtStep(objective.loss, at)
        return objective

    monkeypatch.setattr(fit_module, "build_objective", build_failing)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
) -> None:
    cfg, _ = load_config(None, [*SETTINGS, "train.epochs=3"])
    _with_nan_loss(monkeypatch, at=8)  # epoch 1 (6 steps per epoch), its third batch
    with pytest.raises(NonFiniteLossError) as raised:
        fit(cfg, tmp_path / "run", progress=False)
    message = str(raised.value)
    assert "loss is nan at epoch 1, step 8 (batch 2 of the epoch)" in message
    assert "last.ckpt (after epoch 0) is the last good checkpoint" in message and "--resume" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(checkpoints / name, weights_only=True)
        assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 6
        weights = [t for t in checkpoint["state_dict"].values() if t.is_floating_point()]
        assert all(torch.isfinite(t).all() for t in weights)


def test_a_nan_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch) -> None:
    cfg, _ = load_config(None, SETTINGS)
    _with_nan_loss(monkeypatch, at=0)
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 0 .*No checkpoint had been written yet"):
        fit(cfg, tmp_path / "run", progress=False)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, monkeypatch) -> None:
    """A step can turn the weights to NaN with a finite loss (an infinite gradient); the checkpoint at
    the end of that epoch must not replace the good one."""
    from embedlab.training.callbacks import RetrievalValidation

    cfg, _ = load_config(None, [*SETTINGS, "train.epochs=2"])
    validate = RetrievalValidation.on_train_epoch_end

    def poison_after_epoch_0(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.embedder.neck.linear.weight.fill_(float("inf"))
            return
        validate(self, trainer, pl_module)

    monkeypatch.setattr(RetrievalValidation, "on_train_epoch_end", poison_after_epoch_0)
    with pytest.raises(NonFiniteWeightsError, match="after epoch 1, step 12 .*embedder.neck.linear.weight"):
        fit(cfg, tmp_path / "run", progress=False)
    assert _last_epoch(tmp_path / "run") == 0
