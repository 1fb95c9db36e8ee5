"""Reading configs: YAML files, --set overrides and errors that name the key."""

import pytest

from embedlab.config import ConfigError, load_config, parse_config


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


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="train.epochs"):
        parse_config({"train": {"epochs": 0}})


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


def test_a_packaged_config_can_be_named_alone_from_any_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("image_folder.yaml", "image_folder", "configs/image_folder.yaml"):
        cfg, _ = load_config(name)
        assert cfg.model.backbone == "resnet18"
    with pytest.raises(ConfigError, match=r"image_csv.yaml.*embedlab init"):
        load_config("whales.yaml")
