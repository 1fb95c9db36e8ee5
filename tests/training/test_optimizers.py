import typing

import pytest
import torch

from embedlab.config import OptimizerConfig
from embedlab.training.optimizers import OPTIMIZERS, build_optimizer


def _groups() -> list[dict]:
    weight, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.zeros(2))
    return [{"params": [weight], "weight_decay": 0.01, "lr": 0.1}, {"params": [bias], "weight_decay": 0.0}]


def test_the_config_offers_exactly_the_registered_optimizers() -> None:
    offered = typing.get_args(OptimizerConfig.model_fields["name"].annotation)
    assert sorted(offered) == OPTIMIZERS.names()


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_keeps_each_groups_settings_and_steps(name: str) -> None:
    optimizer = build_optimizer(OptimizerConfig(name=name, lr=0.5), _groups())
    assert isinstance(optimizer, OPTIMIZERS.get(name))
    decayed, plain = optimizer.param_groups
    assert (decayed["lr"], decayed["weight_decay"]) == (0.1, 0.01)
    assert (plain["lr"], plain["weight_decay"]) == (0.5, 0.0)
    plain["params"][0].sum().backward()
    optimizer.step()
    assert not torch.equal(plain["params"][0], torch.zeros(2))


def test_sgd_is_nesterov_with_the_configured_momentum() -> None:
    optimizer = build_optimizer(OptimizerConfig(name="sgd", momentum=0.8), _groups())
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in optimizer.param_groups)


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*Valid names: adam, adamw, sgd"):
        OPTIMIZERS.get("adamm")
