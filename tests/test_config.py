from pathlib import Path

import pytest

from embedlab.config import (
    ConfigError,
    ExperimentConfig,
    expand_grid,
    load_config,
    parse_config,
    parse_grid_option,
)


def test_defaults_validate() -> None:
    cfg = ExperimentConfig()
    assert cfg.losses()[0].name == "CircleLoss"
    assert cfg.losses()[0].kwargs() == {"m": 0.4, "gamma": 80}


def test_unknown_key_names_the_key_and_lists_valid_keys_near_it() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"model": {"backbon": "resnet18"}})
    message = str(error.value)
    assert "model.backbon" in message
    assert "Did you mean 'backbone'" in message
    assert "embedding_dim" in message


def test_set_override_of_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*Did you mean 'epochs'"):
        load_config(None, ["train.epoch=3"])


def test_set_parses_yaml_values_and_nested_blocks() -> None:
    cfg, _ = load_config(
        None, ["train.epochs=3", "optimizer.lr=0.01", "loss={name: ArcFaceLoss, margin: 20}"]
    )
    assert cfg.train.epochs == 3 and cfg.optimizer.lr == 0.01
    assert cfg.losses()[0].name == "ArcFaceLoss" and cfg.losses()[0].kwargs() == {"margin": 20}


def test_loss_keeps_its_own_keyword_arguments_and_embedlab_keys_apart() -> None:
    cfg = parse_config({"loss": [{"name": "CenterLoss", "weight": 0.01, "lr": 0.5, "alpha": 1}]})
    term = cfg.losses()[0]
    assert term.weight == 0.01 and term.lr == 0.5 and term.kwargs() == {"alpha": 1}


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        parse_config({"train": {"epochs": 0}})


def test_monitor_must_be_a_computed_metric() -> None:
    with pytest.raises(ConfigError, match="train.monitor"):
        parse_config({"train": {"monitor": "map_at_r", "metrics": ["precision_at_1"]}})


def test_yaml_round_trip(tmp_path) -> None:
    cfg, _ = load_config(None, ["train.epochs=2", "loss={name: CosFaceLoss, margin: 0.35}"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again, _ = load_config(path)
    assert again == cfg


def test_missing_file_and_bad_yaml_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


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


def test_docs_config_reference_is_the_generated_one() -> None:
    from pathlib import Path

    from embedlab.config import reference_markdown

    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert path.read_text() == reference_markdown(), "regenerate docs/config.md from reference_markdown()"


def test_grid_label_of_a_loss_list_joins_its_blocks() -> None:
    raw = {"grid": {"loss": [[{"name": "SoftmaxLoss"}, {"name": "CenterLoss", "weight": 0.1, "lr": 0.01}]]}}
    [(label, _)] = list(expand_grid(raw))
    assert label == "loss=SoftmaxLoss + 0.1*CenterLoss"


def test_default_validation_metrics_are_the_evaluation_defaults() -> None:
    # config keeps its own copy so that reading a config never imports faiss
    from embedlab.evaluation import DEFAULT_METRICS

    assert ExperimentConfig().train.metrics == list(DEFAULT_METRICS)


def test_grid_label_names_the_miner_of_a_loss_block() -> None:
    block = {
        "name": "TripletMarginLoss",
        "margin": 0.1,
        "miner": {"name": "MultiSimilarityMiner", "epsilon": 0.1},
    }
    [(label, _)] = list(expand_grid({"grid": {"loss": [block]}}))
    assert label == "loss=TripletMarginLoss(margin=0.1) mined by MultiSimilarityMiner(epsilon=0.1)"


def test_dolg_settings_are_checked_where_the_config_is_read() -> None:
    cfg, _ = load_config(None, ["model.head=dolg", "model.dolg.local_stage=3", "model.dolg.dilations=[2, 4]"])
    assert (cfg.model.dolg.local_stage, cfg.model.dolg.dilations, cfg.model.dolg.local_dim) == (
        3,
        [2, 4],
        512,
    )
    with pytest.raises(ConfigError, match=r"unknown key 'model.dolg.dilation'.*Did you mean 'dilations'"):
        load_config(None, ["model.dolg.dilation=[3]"])
    with pytest.raises(ConfigError, match=r"model.dolg.dilations.*1 or more"):
        load_config(None, ["model.head=dolg", "model.dolg.dilations=[0, 3]"])
    with pytest.raises(ConfigError, match=r"model.pooling flatten does not fit model.head dolg"):
        load_config(None, ["model.head=dolg", "model.pooling=flatten"])


CONFIGS = Path(__file__).resolve().parents[1] / "src" / "embedlab" / "configs"


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


def test_founding_config_is_the_founding_workflow() -> None:
    from embedlab.config import read_yaml

    founding = parse_config(read_yaml(CONFIGS / "fashion_mnist_founding.yaml"))
    # The founding workflow: the example network, 50-d, CircleLoss, batch 32, Adam at 1e-3, 10 epochs.
    assert (founding.model.backbone, founding.model.pooling, founding.model.neck) == (
        "pml_mnist_example",
        "flatten",
        "linear",
    )
    assert founding.model.embedding_dim == 50 and founding.train.batch_size == 32
    assert (founding.optimizer.name, founding.optimizer.lr, founding.train.epochs) == ("adam", 1e-3, 10)
    assert [loss.name for loss in founding.losses()] == ["CircleLoss"]
    assert founding.losses()[0].kwargs() == {"m": 0.4, "gamma": 80}
    assert not (founding.data.augment.flip or founding.data.augment.crop_padding)
