import typing

import pytest
import torch

from embedlab.config import ModelConfig
from embedlab.models.pooling import POOLING, GeM, gem


def test_gem_matches_the_formula_by_hand() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    assert gem(features, 3.0).item() == pytest.approx(expected)


def test_gem_with_p_one_is_average_and_large_p_approaches_max() -> None:
    features = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(gem(features, 1.0), features.mean(dim=(-2, -1)))
    assert torch.allclose(gem(features, 200.0), features.amax(dim=(-2, -1)), atol=2e-2)


def test_gem_exponent_is_learned() -> None:
    module = GeM(p=3.0)
    module(torch.rand(2, 3, 4, 4)).sum().backward()
    assert module.p.grad is not None and module.p.grad.abs() > 0


def test_registry_builds_every_pooling() -> None:
    features = torch.rand(2, 3, 4, 4)
    for name in ("gem", "avg", "max"):
        assert POOLING.build(name)(features).shape == (2, 3)
        assert POOLING.build(name).output_features(3) == 3


def test_flatten_keeps_every_value_in_layout_order() -> None:
    features = torch.arange(24.0).view(2, 3, 2, 2)
    flatten = POOLING.build("flatten", map_size=(2, 2))
    assert torch.equal(flatten(features), features.view(2, 12))
    assert flatten.output_features(3) == 12


def test_flatten_needs_the_map_size() -> None:
    with pytest.raises(TypeError, match="map_size"):
        POOLING.build("flatten")


def test_the_config_offers_exactly_the_registered_poolings() -> None:
    assert sorted(typing.get_args(ModelConfig.model_fields["pooling"].annotation)) == POOLING.names()
