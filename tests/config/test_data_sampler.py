"""data.sampler and data.min_images_per_identity, checked where the config is read."""

import typing

import pytest

from embedlab.config import ConfigError, DataConfig, load_config


def test_the_sampler_defaults_to_auto_and_keeps_every_identity() -> None:
    cfg, _ = load_config(None, [])
    assert (cfg.data.sampler, cfg.data.min_images_per_identity) == ("auto", 1)
    cfg, _ = load_config(None, ["data.sampler=class_balanced", "data.min_images_per_identity=2"])
    assert (cfg.data.sampler, cfg.data.min_images_per_identity) == ("class_balanced", 2)


def test_m_per_class_batches_without_data_m_per_class_name_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"data.sampler m_per_class needs data.m_per_class"):
        load_config(None, ["data.sampler=m_per_class"])
    cfg, _ = load_config(None, ["data.sampler=m_per_class", "data.m_per_class=4"])
    assert cfg.data.m_per_class == 4


def test_min_images_per_identity_with_shuffled_batches_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"data.min_images_per_identity=2 .* data.sampler is random"):
        load_config(None, ["data.min_images_per_identity=2"])
    with pytest.raises(ConfigError, match=r"data.min_images_per_identity=3 .* data.sampler is random"):
        load_config(None, ["data.sampler=random", "data.m_per_class=4", "data.min_images_per_identity=3"])
    load_config(None, ["data.m_per_class=4", "data.min_images_per_identity=2"])  # auto: m_per_class
    with pytest.raises(ConfigError, match=r"data.min_images_per_identity"):
        load_config(None, ["data.min_images_per_identity=0"])
    with pytest.raises(ConfigError, match=r"data.sampler"):
        load_config(None, ["data.sampler=balanced"])


def test_the_config_and_the_loaders_name_the_same_samplers() -> None:
    from embedlab.data.loaders import SamplerName

    annotation = DataConfig.model_fields["sampler"].annotation
    assert typing.get_args(annotation) == typing.get_args(SamplerName)
