import math

import pytest
import timm
import torch
from torch import nn

from embedlab.config import OptimizerConfig, SchedulerConfig
from embedlab.models.backbones import create_backbone
from embedlab.training.optimizers import (
    build_optimizer,
    build_scheduler,
    parameter_groups,
    schedules_the_rate,
    step_factor,
    warmup_cosine_factor,
)


def _groups() -> list[dict]:
    weight, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.zeros(2))
    return [{"params": [weight], "weight_decay": 0.01, "lr": 0.1}, {"params": [bias], "weight_decay": 0.0}]


def test_warmup_then_cosine() -> None:
    assert warmup_cosine_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(10 + 45, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(30, 100, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_step_schedule_decays_every_step_epochs() -> None:
    assert step_factor(0, 10, 0, 2, 0.1) == 1.0
    assert step_factor(19, 10, 0, 2, 0.1) == 1.0
    assert step_factor(20, 10, 0, 2, 0.1) == pytest.approx(0.1)
    assert step_factor(45, 10, 0, 2, 0.1) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD), ("lion", None)],
)
def test_timms_optimizers_by_name_keep_each_groups_settings_and_step(name: str, cls: type | None) -> None:
    optimizer = build_optimizer(OptimizerConfig(name=name, lr=0.5), _groups())
    if cls is not None:
        assert type(optimizer) is cls
    else:
        assert type(optimizer) is timm.optim.Lion
    decayed, plain = optimizer.param_groups
    assert (decayed["lr"], decayed["weight_decay"]) == (0.1, 0.01)
    assert (plain["lr"], plain["weight_decay"]) == (0.5, 0.0)
    plain["params"][0].sum().backward()
    optimizer.step()
    assert not torch.equal(plain["params"][0], torch.zeros(2))


def test_sgd_is_nesterov_with_the_configured_momentum_and_args_reach_the_class() -> None:
    optimizer = build_optimizer(OptimizerConfig(name="sgd", momentum=0.8), _groups())
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in optimizer.param_groups)
    adam = build_optimizer(OptimizerConfig(name="adamw", args={"betas": [0.8, 0.9]}), _groups())
    assert list(adam.param_groups[0]["betas"]) == [0.8, 0.9]


def test_an_unknown_optimizer_names_the_key_and_the_nearest() -> None:
    with pytest.raises(ValueError, match=r"optimizer.name 'adamww' .*Did you mean 'adamw'"):
        build_optimizer(OptimizerConfig(name="adamww"), _groups())


class _Model(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Linear(4, 2)


def _lr_of(groups: list[dict], parameter: nn.Parameter) -> float:
    (lr,) = [g["lr"] for g in groups if any(p is parameter for p in g["params"])]
    return lr


def test_backbone_neck_and_head_each_get_their_learning_rate_and_every_parameter_appears_once() -> None:
    backbone = create_backbone("small_cnn", 1, False, None, {})
    model = _Model(backbone)
    head = [nn.Parameter(torch.ones(3, 2))]
    settings = OptimizerConfig(lr=0.01, backbone_lr=0.001, head_lr=0.1, weight_decay=0.05)
    groups = parameter_groups(backbone, list(model.neck.named_parameters()), [(head, None)], settings)
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in [*model.parameters(), *head])
    assert all(_lr_of(groups, p) == 0.001 for p in backbone.parameters())
    assert _lr_of(groups, model.neck.weight) == 0.01 and _lr_of(groups, head[0]) == 0.1
    for group in groups:
        if group["weight_decay"]:
            assert all(p.ndim > 1 for p in group["params"])


def test_layer_decay_scales_each_stage_down_from_the_output() -> None:
    backbone = create_backbone("resnet18", 3, False, None, {})
    settings = OptimizerConfig(lr=0.01, backbone_lr=0.001, layer_decay=0.5)
    groups = parameter_groups(backbone, [], [], settings)
    model = backbone.model
    stem, last = model.conv1.weight, model.layer4[1].conv2.weight
    # timm groups a ResNet by block: layer4.1, layer4.0, layer3.1, ... from the output
    blocks = [model.layer4[1], model.layer4[0], model.layer3[1], model.layer3[0]]
    rates = [_lr_of(groups, block.conv1.weight) for block in blocks]
    assert _lr_of(groups, last) == pytest.approx(0.001)  # the last block learns at backbone_lr
    assert rates == pytest.approx([0.001, 0.0005, 0.00025, 0.000125])
    assert _lr_of(groups, stem) < rates[-1]
    assert all("lr_scale" not in g for g in groups)


def test_layer_decay_without_timms_stage_grouping_is_refused() -> None:
    backbone = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="optimizer.layer_decay needs a timm backbone"):
        parameter_groups(backbone, [], [], OptimizerConfig(layer_decay=0.7))


def test_timms_schedule_steps_every_update_and_keeps_the_groups_ratio() -> None:
    optimizer = build_optimizer(OptimizerConfig(lr=1.0), [*_groups()])
    optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = 1.0, 0.1
    scheduler = build_scheduler(
        optimizer,
        SchedulerConfig(name="timm.cosine", warmup_epochs=1),
        lr=1.0,
        total_steps=40,
        epochs=4,
    )
    seen = []
    for update in range(41):
        scheduler.step_update(num_updates=update)
        seen.append([g["lr"] for g in optimizer.param_groups])
    # timm's warm-up: linear from 0 over the first epoch's 10 updates, inside the cosine's 40
    assert seen[0] == [0.0, 0.0] and seen[5] == pytest.approx([0.5, 0.05])
    for update in (10, 25, 40):
        cosine = 0.5 * (1 + math.cos(math.pi * update / 40))
        assert seen[update] == pytest.approx([cosine, cosine / 10], abs=1e-9)
    assert all(b == pytest.approx(a / 10) for a, b in seen)


def test_scheduler_args_belong_to_timms_schedules() -> None:
    with pytest.raises(ValueError, match="scheduler.args is for timm's schedules"):
        SchedulerConfig(name="cosine", args={"cycle_limit": 2})


def test_a_constant_rate_without_warm_up_needs_no_scheduler() -> None:
    assert not schedules_the_rate(SchedulerConfig(name="constant"))
    assert schedules_the_rate(SchedulerConfig(name="constant", warmup_epochs=1))
