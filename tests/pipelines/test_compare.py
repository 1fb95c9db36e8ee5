import csv

import pytest

from embedlab.config import ConfigError, load_config, parse_grid_option
from embedlab.pipelines.compare import compare
from embedlab.training.fit import fit


def test_compare_runs_every_combination_and_seed_and_ranks_them(tmp_path, quick_digits) -> None:
    _, raw = load_config(None, quick_digits)
    raw["grid"] = {
        "loss": [{"name": "ContrastiveLoss"}, {"name": "CosFaceLoss", "margin": 0.35, "scale": 32}]
    }
    comparison = compare(
        raw, tmp_path, grid=[parse_grid_option("optimizer.lr=0.001,0.003")], seeds=2, progress=False
    )
    assert len(comparison.rows) == 4
    assert all(len(row.seeds) == 2 for row in comparison.rows)
    assert sorted(comparison.rows[0].seeds) == [0, 1]
    means = [row.mean("map_at_r") for row in comparison.rows]
    assert means == sorted(means, reverse=True)
    with comparison.csv_path.open() as stream:
        table = list(csv.DictReader(stream))
    assert {r["combination"] for r in table} == {
        "loss=ContrastiveLoss optimizer.lr=0.001",
        "loss=ContrastiveLoss optimizer.lr=0.003",
        "loss=CosFaceLoss(margin=0.35, scale=32) optimizer.lr=0.001",
        "loss=CosFaceLoss(margin=0.35, scale=32) optimizer.lr=0.003",
    }
    assert {"precision_at_1_mean", "map_at_r_std", "train_seconds_mean", "images_per_second_mean"} <= set(
        table[0]
    )
    assert len(list((tmp_path / "runs").glob("*/seed-*/summary.json"))) == 8


def test_finished_runs_are_reused_when_a_comparison_is_run_again(tmp_path, monkeypatch, quick_digits) -> None:
    _, raw = load_config(None, quick_digits)
    compare(raw, tmp_path, progress=False)
    calls = []
    monkeypatch.setattr("embedlab.pipelines.compare.fit", lambda *a, **k: calls.append(a) or fit(*a, **k))
    again = compare(raw, tmp_path, progress=False)
    assert calls == [] and len(again.rows) == 1


def test_a_run_folder_of_another_config_is_trained_again(tmp_path, monkeypatch, quick_digits) -> None:
    _, raw = load_config(None, quick_digits)
    compare(raw, tmp_path, progress=False)
    calls = []
    monkeypatch.setattr("embedlab.pipelines.compare.fit", lambda *a, **k: calls.append(a) or fit(*a, **k))
    _, changed = load_config(None, [*quick_digits, "optimizer.lr=0.01"])
    compare(changed, tmp_path, progress=False)
    assert len(calls) == 1


def test_a_grid_that_cannot_run_fails_before_any_run_folder_exists(tmp_path, quick_digits) -> None:
    _, raw = load_config(None, quick_digits)
    # ArcFaceLoss takes no `m`: the second combination cannot be built, so the first must not start.
    raw["grid"] = {"loss": [{"name": "ContrastiveLoss"}, {"name": "ArcFaceLoss", "m": 0.4}]}
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match=r"combination 'loss=ArcFaceLoss\(m=0.4\)' cannot run.*'m'"):
        compare(raw, out, progress=False)
    assert not out.exists()


def test_a_grid_over_loss_names_gives_each_loss_its_own_block(tmp_path, quick_digits) -> None:
    _, raw = load_config(None, [*quick_digits, "loss={name: CircleLoss, m: 0.4, gamma: 80}"])
    raw["grid"] = {"loss.name": ["CircleLoss", "ContrastiveLoss"]}
    comparison = compare(raw, tmp_path, progress=False)
    assert {row.combination for row in comparison.rows} == {
        "loss.name=CircleLoss",
        "loss.name=ContrastiveLoss",
    }
