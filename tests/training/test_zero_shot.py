"""The zero-shot row: the backbone's pooled features scored before the first epoch as metrics.csv's
epoch 0, kept once through a resume, and the summary's warning when a run ends below it."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from embedlab.config import load_config
from embedlab.data.splits import prepare_data
from embedlab.models.backbones import create_backbone
from embedlab.models.inference import embed
from embedlab.models.zero_shot import ZeroShotEmbedder, build_zero_shot_embedder
from embedlab.training.fit import fit
from embedlab.training.validation import score_validation
from embedlab.training.zero_shot import below_zero_shot_warnings, history_summary

DIGITS = [
    "data.dataset=digits",
    "data.validation.split=images",
    "model.embedding_dim=16",
    "train.batch_size=32",
    "train.max_steps_per_epoch=3",
    "optimizer.lr=0.003",
    "loss={name: ContrastiveLoss}",
]
TIMINGS = {"train_seconds", "epoch_train_seconds", "images_per_second", "eval_seconds"}


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A "pretrained" small_cnn for digits' 1 channel: a timm model made with pretrained=False, saved."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "small_cnn.pth"
    torch.save(create_backbone("small_cnn", in_chans=1).model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, weights_file):
    # train.zero_shot is left at auto: model.weights_path turns it on
    cfg, _ = load_config(None, [*DIGITS, f"model.weights_path={weights_file}", "train.epochs=2"])
    return cfg, fit(cfg, tmp_path_factory.mktemp("runs") / "pretrained", progress=False)


def test_a_run_from_weights_starts_with_the_zero_shot_row_then_epochs_1_to_e(pretrained_run) -> None:
    _, result = pretrained_run
    rows = _history(result.run_dir)
    assert [(r["epoch"], r["stage"]) for r in rows] == [("0", "zero_shot"), ("1", "train"), ("2", "train")]
    zero_shot = rows[0]
    assert (zero_shot["step"], zero_shot["train_loss"], zero_shot["images_per_second"]) == ("0", "", "")
    assert float(zero_shot["train_seconds"]) == 0.0 and float(zero_shot["epoch_train_seconds"]) == 0.0
    assert float(zero_shot["eval_seconds"]) > 0
    assert int(zero_shot["n_queries"]) == int(rows[1]["n_queries"]) > 0
    assert zero_shot["n_queries_without_positives"] == "0"
    # the zero-shot evaluation is not training time
    assert result.summary["train_seconds"] == pytest.approx(float(rows[-1]["train_seconds"]), abs=1e-3)
    assert result.summary["best_epoch"] in (1, 2)


def test_the_zero_shot_row_scores_the_pooled_features_as_embedding_them_by_hand(pretrained_run) -> None:
    cfg, result = pretrained_run
    data = prepare_data(cfg.data)
    embedder = build_zero_shot_embedder(cfg.model, data.channels, data.image_size)
    query = embed(embedder, data.query, cfg.train.eval_batch_size)
    gallery = None if data.gallery is None else embed(embedder, data.gallery, cfg.train.eval_batch_size)
    expected = score_validation(query, gallery, data.query, data.gallery, cfg.train.metrics)
    row = _history(result.run_dir)[0]
    for name, value in expected.metrics.items():
        assert float(row[name]) == pytest.approx(value, abs=1e-6), name
    assert int(row["n_queries"]) == expected.n_queries
    assert result.summary["zero_shot_metrics"] == pytest.approx(expected.metrics, abs=1e-6)


def test_auto_scores_no_zero_shot_row_from_scratch_and_on_scores_one(tmp_path) -> None:
    scratch, _ = load_config(None, [*DIGITS, "train.epochs=1"])
    assert fit(scratch, tmp_path / "scratch", progress=False).summary["zero_shot_metrics"] is None
    assert [r["stage"] for r in _history(tmp_path / "scratch")] == ["train"]
    forced, _ = load_config(None, [*DIGITS, "train.epochs=1", "train.zero_shot=on"])
    summary = fit(forced, tmp_path / "forced", progress=False).summary
    assert [r["stage"] for r in _history(tmp_path / "forced")] == ["zero_shot", "train"]
    assert set(summary["zero_shot_metrics"]) == set(forced.train.metrics)
    off, _ = load_config(None, [*DIGITS, "model.weights_path=unused.pth", "train.zero_shot=off"])
    assert not off.train.zero_shot_enabled(off.model)


def test_the_zero_shot_evaluation_leaves_the_training_as_it_would_be_without_it(tmp_path) -> None:
    outcomes = []
    for setting in ("on", "off"):
        cfg, _ = load_config(
            None, [*DIGITS, "train.epochs=2", "data.augment.flip=true", f"train.zero_shot={setting}"]
        )
        fit(cfg, tmp_path / setting, progress=False)
        trained = [r for r in _history(tmp_path / setting) if r["stage"] == "train"]
        outcomes.append([{k: v for k, v in r.items() if k not in TIMINGS} for r in trained])
    assert outcomes[0] == outcomes[1]


def test_a_resume_keeps_the_one_zero_shot_row_and_does_not_score_it_again(tmp_path, monkeypatch) -> None:
    from embedlab.training import callbacks

    zero_shot_embeds = []

    def counting_embed(embedder, *args, **kwargs):
        if isinstance(embedder, ZeroShotEmbedder):
            zero_shot_embeds.append(len(args[0]))
        return embed(embedder, *args, **kwargs)

    monkeypatch.setattr(callbacks, "embed", counting_embed)
    one, _ = load_config(None, [*DIGITS, "train.epochs=1", "train.zero_shot=on"])
    fit(one, tmp_path / "run", progress=False)
    first = _history(tmp_path / "run")[0]
    assert len(zero_shot_embeds) == 1  # the validation set searches itself: one set to embed
    three, _ = load_config(None, [*DIGITS, "train.epochs=3", "train.zero_shot=on"])
    resumed = fit(three, tmp_path / "run", resume=True, progress=False)
    rows = _history(tmp_path / "run")
    assert [(r["epoch"], r["stage"]) for r in rows] == [
        ("0", "zero_shot"),
        ("1", "train"),
        ("2", "train"),
        ("3", "train"),
    ]
    assert rows[0] == first and len(zero_shot_embeds) == 1
    assert resumed.summary["zero_shot_metrics"]["map_at_r"] == pytest.approx(float(first["map_at_r"]))


def test_a_run_that_ends_below_its_zero_shot_score_says_so_in_its_summary(tmp_path, monkeypatch) -> None:
    from embedlab.training import callbacks

    calls = []

    def perfect_zero_shot(*args, **kwargs):
        result = score_validation(*args, **kwargs)
        calls.append(result)
        if len(calls) > 1:
            return result
        return dataclasses.replace(result, metrics=dict.fromkeys(result.metrics, 1.0))

    monkeypatch.setattr(callbacks, "score_validation", perfect_zero_shot)
    cfg, _ = load_config(None, [*DIGITS, "train.epochs=2", "train.zero_shot=on"])
    result = fit(cfg, tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["zero_shot_metrics"]["map_at_r"] == 1.0
    [warning] = summary["warnings"]
    final = summary["metrics"]["map_at_r"]
    assert warning.startswith(f"map_at_r ended at {final:.4f} after epoch 2 and never reached its zero-shot")
    assert "1.0000" in warning and f"the best epoch, {summary['best_epoch']}" in warning
    assert result.summary["warnings"] == summary["warnings"]


def test_the_warning_tells_a_best_checkpoint_above_zero_shot_from_one_below() -> None:
    assert below_zero_shot_warnings("map_at_r", 0.5, 0.5, 3, 0.6, 2) == []  # level is not below
    [above] = below_zero_shot_warnings("map_at_r", 0.5, 0.45, 3, 0.6, 2)
    assert above == (
        "map_at_r ended at 0.4500 after epoch 3, below its zero-shot value 0.5000 (the pretrained "
        "backbone's pooled features, scored before the first epoch); the best checkpoint, epoch 2 at "
        "0.6000, is above it"
    )
    [never] = below_zero_shot_warnings("map_at_r", 0.5, 0.45, 3, 0.48, 1)
    assert "never reached its zero-shot value 0.5000" in never and "the best epoch, 1, scored 0.4800" in never


def test_the_summary_reads_final_best_and_zero_shot_values_from_the_rows() -> None:
    def row(epoch: int, value: str) -> dict[str, str]:
        return {"epoch": str(epoch), "stage": "zero_shot" if epoch == 0 else "train", "map_at_r": value}

    rows = [row(0, "0.7"), row(1, "0.6"), row(2, ""), row(3, "0.65")]
    summary = history_summary(rows, ["map_at_r"], "map_at_r")
    assert summary["metrics"] == {"map_at_r": 0.65} and summary["best_epoch"] == 3
    assert summary["zero_shot_metrics"] == {"map_at_r": 0.7}  # never the best epoch: it has no checkpoint
    assert len(summary["warnings"]) == 1
    plain = history_summary(rows[1:], ["map_at_r"], "map_at_r")
    assert (plain["zero_shot_metrics"], plain["warnings"]) == (None, [])
