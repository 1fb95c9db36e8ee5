"""The configs shipped in configs/ validate and run."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedlab.config import expand_grid, load_config, parse_config
from embedlab.training.fit import fit

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_and_grid_combination_validates(path: Path) -> None:
    _, raw = load_config(path)
    for label, variant in expand_grid(raw):
        parse_config(variant, label)


def test_image_folder_example_trains_on_a_folder(tmp_path: Path, image_folder: Path) -> None:
    cfg, _ = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "image_folder.yaml",
        [
            f"data.dataset={image_folder}",
            "data.image_size=32",
            "data.num_workers=0",
            "data.m_per_class=2",
            "model.pretrained=false",
            "model.embedding_dim=16",
            "train.epochs=1",
            "train.batch_size=4",
            "data.validation.fraction=0.25",
        ],
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result.summary["num_classes"] == 3
    assert 0.0 <= result.metrics["map_at_r"] <= 1.0


def test_photo_recipe_trains_with_only_the_data_and_the_weights_set(tmp_path: Path, image_csv: Path) -> None:
    """A new user's run of configs/photos.yaml: the data and a weights file, here made smaller and shorter
    so that it runs in seconds (a random MobileNetV2 saved as the 'pretrained' file)."""
    import json

    import timm
    import torch

    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(timm.create_model("mobilenetv2_100", num_classes=0).state_dict(), weights)
    cfg, _ = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "photos.yaml",
        [
            f"data.dataset={image_csv}",
            f"model.weights_path={weights}",
            "data.image_size=32",
            "data.num_workers=0",
            "train.epochs=2",
            "train.batch_size=4",
        ],
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in rows[1:]] == ["zero_shot", "train", "train"]
    assert 0.0 <= result.metrics["map_at_r"] <= 1.0
    preprocessing = json.loads((tmp_path / "run" / "model.json").read_text())["preprocessing"]
    assert preprocessing["resize"].startswith("whole image to 32x32")
