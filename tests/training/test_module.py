import math

import pytest
import torch

from embedlab.config import AugmentConfig, ModelConfig, OptimizerConfig, SchedulerConfig, parse_config
from embedlab.models import build_embedder
from embedlab.training.module import EmbeddingModule, step_factor, warmup_cosine_factor
from embedlab.training.objective import build_objective


def test_warmup_then_cosine() -> None:
    assert warmup_cosine_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    middle = 10 + 45
    assert warmup_cosine_factor(middle, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_factor(30, 100, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_step_schedule_decays_every_step_epochs() -> None:
    assert step_factor(0, 10, 0, 2, 0.1) == 1.0
    assert step_factor(19, 10, 0, 2, 0.1) == 1.0
    assert step_factor(20, 10, 0, 2, 0.1) == pytest.approx(0.1)
    assert step_factor(45, 10, 0, 2, 0.1) == pytest.approx(0.01)


def _module(optimizer: OptimizerConfig, loss: dict) -> EmbeddingModule:
    cfg = parse_config({"loss": loss})
    embedder = build_embedder(ModelConfig(embedding_dim=8), channels=1, image_size=8)
    objective = build_objective(
        cfg, num_classes=3, embedding_size=8, class_counts=torch.ones(3, dtype=torch.long)
    )
    return EmbeddingModule(embedder, objective, optimizer, SchedulerConfig(name="constant"), AugmentConfig())


def test_parameter_groups_decay_weights_only_and_give_the_head_its_learning_rate() -> None:
    module = _module(
        OptimizerConfig(name="sgd", lr=0.1, head_lr=1.0, weight_decay=0.01),
        {"name": "ArcFaceLoss", "margin": 28.6, "scale": 64},
    )
    optimizer = module.configure_optimizers()
    groups = optimizer.param_groups
    decayed, plain, head = groups
    assert decayed["weight_decay"] == 0.01 and all(p.ndim > 1 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in plain["params"])
    assert head["lr"] == 1.0 and head["params"][0] is module.loss.W
    assert isinstance(optimizer, torch.optim.SGD)


def test_training_step_returns_a_differentiable_loss() -> None:
    module = _module(OptimizerConfig(), {"name": "ContrastiveLoss"})
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    module.log = lambda *args, **kwargs: None  # outside a Trainer there is nowhere to log
    loss = module.training_step((images, labels), 0)
    loss.backward()
    assert loss.ndim == 0 and module.embedder.neck.linear.weight.grad is not None
