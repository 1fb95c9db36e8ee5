"""Faults a long run meets: a SIGKILL mid-epoch and mid-checkpoint write, then --resume; a NaN loss.

The killed runs are real `embedlab train` processes that kill themselves with SIGKILL at a chosen
point (so the point is exact, not a race), forked by `start_forked` (tests/conftest.py).
"""

from __future__ import annotations

import csv
import json
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
    "data.augment=[{name: RandomHorizontalFlip}]",
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
    import io, multiprocessing, os, signal
    from pathlib import Path

    import torch

    from embedlab.cli import app
    from embedlab.training import checkpoint_io
    from embedlab.training.module import EmbeddingModule

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    # DataLoader workers started by spawn or forkserver import this file again as __mp_main__.
    if __name__ == "__main__":
        # As `embedlab train` starts on Linux: workers forked, not started afresh (10 s of imports each).
        multiprocessing.set_start_method("fork", force=True)
        where, epoch = KILL or (None, None)
        if where == "between-epochs":
            epoch_start = EmbeddingModule.on_train_epoch_start

            def start_then_die(self):
                if self.current_epoch == epoch:
                    die()
                return epoch_start(self)

            EmbeddingModule.on_train_epoch_start = start_then_die
        elif where == "validation":
            from embedlab.training.callbacks import RetrievalValidation

            validate = RetrievalValidation.on_train_epoch_end

            def die_while_validating(self, trainer, pl_module):
                if trainer.current_epoch == epoch:
                    die()
                return validate(self, trainer, pl_module)

            RetrievalValidation.on_train_epoch_end = die_while_validating
        elif where == "mid-epoch":
            train_step = EmbeddingModule.training_step

            def step_then_die(self, batch, batch_idx):
                if self.current_epoch == epoch and batch_idx == 1:
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


#: What differs between two runs of the same config on any machine: times and their rates.
TIMINGS = {"train_seconds", "epoch_train_seconds", "images_per_second", "eval_seconds", "wall_seconds"}


def _outcome(run_dir: Path) -> tuple[dict, list[dict[str, str]]]:
    """summary.json and metrics.csv without their timings."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [{k: v for k, v in row.items() if k not in TIMINGS} for row in _history(run_dir)]
    return {k: v for k, v in summary.items() if k not in TIMINGS}, rows


def _assert_same_weights(run_dir: Path, reference: Path) -> None:
    for name in ("last.ckpt", "best.ckpt"):
        ours = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        theirs = torch.load(reference / "checkpoints" / name, weights_only=True)
        assert ours["epoch"] == theirs["epoch"] and ours["global_step"] == theirs["global_step"]
        assert ours["state_dict"].keys() == theirs["state_dict"].keys()
        for key, tensor in ours["state_dict"].items():
            assert torch.equal(tensor, theirs["state_dict"][key]), (name, key)


@pytest.fixture(scope="module")
def folder_config(tmp_path_factory, make_image_folder) -> Path:
    """A config training on an image folder read by a worker process: the loader a resume must restart
    exactly (a worker draws its first batches as soon as the loader is iterated)."""
    root = tmp_path_factory.mktemp("faults")
    images = make_image_folder(root / "images", classes=6, per_class=10, size=12)
    settings = [
        f"data.dataset={images}",
        "data.num_workers=1",
        *[s for s in SETTINGS if not s.startswith("data.dataset")],
        "train.batch_size=16",
        "train.max_steps_per_epoch=null",
    ]
    _, raw = load_config(None, settings)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def uninterrupted(folder_config, run_process, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert run_process(["train", str(folder_config), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("where", ["mid-epoch", "between-epochs", "validation", "checkpoint-write"])
def test_a_run_killed_at_any_point_resumes_to_the_same_run_bit_for_bit(
    where, folder_config, uninterrupted, run_process, tmp_path
) -> None:
    train = ["train", str(folder_config), "--out", str(tmp_path / "run")]
    assert run_process(train, kill=(where, 1)) == -9
    # Epoch 1's metrics row is written before its checkpoint, so a kill in that write leaves two rows.
    written_rows = 2 if where == "checkpoint-write" else 1
    assert _last_epoch(tmp_path / "run") == 0 and len(_history(tmp_path / "run")) == written_rows
    if where == "checkpoint-write":
        assert list((tmp_path / "run" / "checkpoints").glob(".last.ckpt.*.tmp")), "a torn temporary"
    assert run_process([*train, "--resume"]) == 0
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    assert _outcome(tmp_path / "run") == _outcome(uninterrupted)
    _assert_same_weights(tmp_path / "run", uninterrupted)


def test_a_run_killed_twice_resumes_to_the_same_metrics(tmp_path, run_process) -> None:
    _, raw = load_config(None, SETTINGS)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    train = ["train", str(config), "--out"]

    uninterrupted = tmp_path / "uninterrupted"
    assert run_process([*train, str(uninterrupted)]) == 0

    killed = tmp_path / "killed"
    assert run_process([*train, str(killed)], kill=("mid-epoch", 1)) == -9
    # Resumed from epoch 0, then killed half-way through writing epoch 1's last.ckpt.
    assert run_process([*train, str(killed), "--resume"], kill=("checkpoint-write", 1)) == -9
    assert _last_epoch(killed) == 0  # the previous checkpoint, whole and loadable
    assert run_process([*train, str(killed), "--resume"]) == 0
    assert _outcome(killed) == _outcome(uninterrupted)
    _assert_same_weights(killed, uninterrupted)


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
    _with_nan_loss(monkeypatch, at=8)  # epoch 2 (6 steps per epoch), its third batch
    with pytest.raises(NonFiniteLossError) as raised:
        fit(cfg, tmp_path / "run", progress=False)
    message = str(raised.value)
    assert "loss is nan at epoch 2, step 8 (batch 3 of the epoch)" in message
    assert "last.ckpt (after 1 completed epoch) is the last good checkpoint" in message
    assert "--resume" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(checkpoints / name, weights_only=True)
        assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 6
        weights = [t for t in checkpoint["state_dict"].values() if t.is_floating_point()]
        assert all(torch.isfinite(t).all() for t in weights)


def test_a_nan_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch) -> None:
    cfg, _ = load_config(None, SETTINGS)
    _with_nan_loss(monkeypatch, at=0)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0 .*No checkpoint had been written yet"):
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
