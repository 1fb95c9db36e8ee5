import typing

import pytest
import torch

from embedlab.config import ModelConfig
from embedlab.models.necks import NECKS, LinearBatchNormNeck, LinearNeck


def test_the_config_offers_exactly_the_registered_necks() -> None:
    assert sorted(typing.get_args(ModelConfig.model_fields["neck"].annotation)) == NECKS.names()


@pytest.mark.parametrize("name", NECKS.names())
def test_every_neck_maps_pooled_features_to_the_embedding_size(name: str) -> None:
    neck = NECKS.build(name, in_features=12, embedding_dim=5, dropout=0.1)
    assert neck(torch.rand(4, 12)).shape == (4, 5)


def test_names_pick_the_bn_neck_and_the_plain_linear_one() -> None:
    bn, linear = (
        NECKS.build("bn", in_features=3, embedding_dim=2),
        NECKS.build("linear", in_features=3, embedding_dim=2),
    )
    assert isinstance(bn, LinearBatchNormNeck) and bn.linear.bias is None
    assert isinstance(linear, LinearNeck) and linear.linear.bias is not None


def test_unknown_neck_argument_is_named() -> None:
    with pytest.raises(TypeError, match="neck 'bn' does not take 'dim'"):
        NECKS.build("bn", in_features=3, dim=2)
