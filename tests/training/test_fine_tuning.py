"""Fine-tuning controls end to end: frozen-backbone epochs, timm schedules, gradient accumulation and
clipping, and augmentation by name in the loader's workers."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from embedlab.config import load_config
from embedlab.training import fit as fit_module
from embedlab.training.fit import fit
from embedlab.training.history import read_history
from embedlab.training.module import EmbeddingModule


def _backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "embedder.backbone."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def test_frozen_backbone_epochs_keep_the_backbone_then_train_it(
    tmp_path: Path, monkeypatch, quick_digits
) -> None:
    built = []
    build = fit_module.build_embedder

    def recording_build(*args, **kwargs):
        embedder = build(*args, **kwargs)
        built.append(copy.deepcopy(embedder.backbone.state_dict()))
        return embedder

    monkeypatch.setattr(fit_module, "build_embedder", recording_build)
    after_epoch = []
    epoch_end = EmbeddingModule.on_train_epoch_end

    def record_epoch(self: EmbeddingModule) -> None:
        after_epoch.append(copy.deepcopy(self.embedder.backbone.state_dict()))
        epoch_end(self)

    monkeypatch.setattr(EmbeddingModule, "on_train_epoch_end", record_epoch)
    cfg, _ = load_config(None, [*quick_digits, "train.epochs=2", "train.freeze_backbone_epochs=1"])
    fit(cfg, tmp_path / "run", progress=False)
    (initial,) = built
    frozen, thawed = after_epoch
    # weights and batch-norm statistics alike
    assert all(torch.equal(frozen[k], initial[k]) for k in initial)
    assert any(not torch.equal(thawed[k], initial[k]) for k in initial if thawed[k].is_floating_point())
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(
        not torch.equal(v, initial[k]) for k, v in _backbone_state(state).items() if v.is_floating_point()
    )


def test_a_timm_schedule_and_accumulation_step_the_rate_once_per_update(
    tmp_path: Path, monkeypatch, quick_digits
) -> None:
    rates = []
    scheduler_step = EmbeddingModule.lr_scheduler_step

    def record(self: EmbeddingModule, scheduler, metric) -> None:
        scheduler_step(self, scheduler, metric)
        rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    monkeypatch.setattr(EmbeddingModule, "lr_scheduler_step", record)
    trainer_options = {}
    trainer_init = L.Trainer.__init__

    def recording_init(self, *args, **kwargs):
        trainer_options.update(kwargs)
        trainer_init(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", recording_init)
    cfg, _ = load_config(
        None,
        [
            *quick_digits,
            "train.epochs=2",
            "train.accumulate_grad_batches=2",
            "train.gradient_clip_val=0.5",
            "scheduler.name=timm.cosine",
            "scheduler.warmup_epochs=0.5",
            "optimizer.lr=0.01",
            "optimizer.name=lion",
        ],
    )
    fit(cfg, tmp_path / "run", progress=False)
    rows = [r for r in read_history(tmp_path / "run" / "metrics.csv") if r.get("stage", "train") == "train"]
    # 4 batches an epoch, an update every 2: 2 updates an epoch
    assert [int(r["step"]) for r in rows] == [2, 4]
    # timm's cosine over the 4 updates, warm-up (half an epoch: 1 update) inside it, read after each
    cosine = [0.01 * 0.5 * (1 + math.cos(math.pi * update / 4)) for update in (1, 2, 3, 4)]
    assert rates == pytest.approx(cosine, abs=1e-12)
    assert trainer_options["gradient_clip_val"] == 0.5 and trainer_options["accumulate_grad_batches"] == 2


def test_image_files_are_augmented_in_the_workers_as_in_the_main_process(
    tmp_path: Path, monkeypatch, make_image_folder
) -> None:
    folder = make_image_folder(tmp_path / "photos", classes=4, per_class=10, size=16)
    seen: dict[str, list[torch.Tensor]] = {}
    step = EmbeddingModule.training_step

    def record(self: EmbeddingModule, batch, batch_idx: int):
        seen.setdefault(self.trainer.default_root_dir, []).append(batch[0].clone())
        return step(self, batch, batch_idx)

    monkeypatch.setattr(EmbeddingModule, "training_step", record)
    augment = "data.augment=[{name: RandomResizedCrop, scale: [0.3, 0.6]}, {name: RandomHorizontalFlip}]"
    for name, settings in [
        ("main", [augment, "data.num_workers=0"]),
        ("workers", [augment, "data.num_workers=2"]),
        ("plain", ["data.num_workers=0"]),
    ]:
        cfg, _ = load_config(
            None,
            [
                f"data.dataset={folder}",
                "data.image_size=16",
                "data.validation.split=images",
                "data.validation.fraction=0.3",
                "train.batch_size=8",
                "train.epochs=1",
                "model.embedding_dim=8",
                "loss={name: ContrastiveLoss}",
                *settings,
            ],
        )
        fit(cfg, tmp_path / name, progress=False)
    in_main, in_workers, plain = (seen[str(tmp_path / name)] for name in ("main", "workers", "plain"))
    assert len(in_main) == len(in_workers) == len(plain) >= 2
    assert all(torch.equal(a, b) for a, b in zip(in_main, in_workers, strict=True))
    assert all(a.dtype == torch.uint8 and a.shape == b.shape for a, b in zip(in_main, plain, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(in_main, plain, strict=True))
