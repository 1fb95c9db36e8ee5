"""compare's grids: --grid options, combinations and their labels."""

from pathlib import Path

import pytest

from embedlab.config import ConfigError, expand_grid, parse_config, parse_grid_option

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "embedlab" / "configs"


def test_grid_combines_config_blocks_and_command_line_axes() -> None:
    raw = {
        "train": {"epochs": 1},
        "grid": {"loss": [{"name": "CircleLoss", "m": 0.4}, {"name": "ArcFaceLoss", "margin": 28.6}]},
    }
    axes = [parse_grid_option("optimizer.lr=0.1,0.01")]
    combinations = list(expand_grid(raw, axes))
    assert len(combinations) == 4
    labels = [label for label, _ in combinations]
    assert labels[0] == "loss=CircleLoss(m=0.4) optimizer.lr=0.1"
    assert labels[3] == "loss=ArcFaceLoss(margin=28.6) optimizer.lr=0.01"
    for _, variant in combinations:
        assert "grid" not in variant
        parse_config(variant)


def test_grid_key_is_checked() -> None:
    with pytest.raises(ConfigError, match="unknown key 'optimiser.lr'"):
        parse_grid_option("optimiser.lr=1,2")


def test_grid_label_of_a_loss_list_joins_its_blocks() -> None:
    raw = {"grid": {"loss": [[{"name": "SoftmaxLoss"}, {"name": "CenterLoss", "weight": 0.1, "lr": 0.01}]]}}
    [(label, _)] = list(expand_grid(raw))
    assert label == "loss=SoftmaxLoss + 0.1*CenterLoss"


def test_grid_label_names_the_miner_of_a_loss_block() -> None:
    block = {
        "name": "TripletMarginLoss",
        "margin": 0.1,
        "miner": {"name": "MultiSimilarityMiner", "epsilon": 0.1},
    }
    [(label, _)] = list(expand_grid({"grid": {"loss": [block]}}))
    assert label == "loss=TripletMarginLoss(margin=0.1) mined by MultiSimilarityMiner(epsilon=0.1)"


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in CONFIGS.glob("*.yaml")),
)
def test_every_packaged_config_validates_with_each_grid_combination(name: str) -> None:
    from embedlab.config import read_yaml

    raw = read_yaml(CONFIGS / name)
    combinations = list(expand_grid(raw)) or [(name, raw)]
    for label, combination in combinations:
        parse_config(combination, f"{name} {label}")


def test_a_grid_over_loss_name_replaces_the_whole_loss_block() -> None:
    raw = {
        "loss": {"name": "CircleLoss", "m": 0.4, "gamma": 80},
        "grid": {"loss.m": [0.25], "loss.name": ["CircleLoss", "ArcFaceLoss"]},
    }
    variants = dict(expand_grid(raw))
    # The config's own loss keeps its arguments; another loss gets none of them, and an axis over an
    # argument of the block reaches the replaced block whatever the order of the axes.
    assert variants["loss.m=0.25 loss.name=CircleLoss"]["loss"] == {
        "name": "CircleLoss",
        "m": 0.25,
        "gamma": 80,
    }
    assert variants["loss.m=0.25 loss.name=ArcFaceLoss"]["loss"] == {"name": "ArcFaceLoss", "m": 0.25}


def test_a_grid_over_miner_name_replaces_the_miner_block() -> None:
    raw = {"miner": {"name": "TripletMarginMiner", "margin": 0.1}, "grid": {"miner.name": ["BatchHardMiner"]}}
    [(_, variant)] = list(expand_grid(raw))
    assert variant["miner"] == {"name": "BatchHardMiner"}


def test_a_grid_over_loss_name_refuses_a_list_of_losses() -> None:
    raw = {"loss": [{"name": "CircleLoss"}, {"name": "CosFaceLoss"}], "grid": {"loss.name": ["ArcFaceLoss"]}}
    with pytest.raises(ConfigError, match="list whole blocks under grid.loss"):
        list(expand_grid(raw))
