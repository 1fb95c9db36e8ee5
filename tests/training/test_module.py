import torch

from embedlab.config import ModelConfig, OptimizerConfig, SchedulerConfig, parse_config
from embedlab.models import build_embedder
from embedlab.training.module import EmbeddingModule
from embedlab.training.objective import build_objective


def _module(optimizer: OptimizerConfig, loss: dict, freeze_backbone_epochs: int = 0) -> EmbeddingModule:
    cfg = parse_config({"loss": loss})
    embedder = build_embedder(ModelConfig(embedding_dim=8), channels=1, image_size=8)
    objective = build_objective(
        cfg, num_classes=3, embedding_size=8, class_counts=torch.ones(3, dtype=torch.long)
    )
    return EmbeddingModule(
        embedder,
        objective,
        optimizer,
        SchedulerConfig(name="constant"),
        freeze_backbone_epochs=freeze_backbone_epochs,
    )


def test_parameter_groups_decay_weights_only_and_give_the_head_its_learning_rate() -> None:
    module = _module(
        OptimizerConfig(name="sgd", lr=0.1, head_lr=1.0, weight_decay=0.01),
        {"name": "ArcFaceLoss", "margin": 28.6, "scale": 64},
    )
    optimizer = module.configure_optimizers()
    *model_groups, head = optimizer.param_groups
    for group in model_groups:
        decayed = group["weight_decay"] > 0
        assert group["lr"] == 0.1 and group["weight_decay"] in (0.0, 0.01)
        assert all((p.ndim > 1) == decayed for p in group["params"])
    assert head["lr"] == 1.0 and head["params"][0] is module.loss.W
    listed = [p for g in model_groups for p in g["params"]]
    assert len(listed) == len(list(module.embedder.parameters()))
    assert isinstance(optimizer, torch.optim.SGD)


def test_training_step_returns_a_differentiable_loss() -> None:
    module = _module(OptimizerConfig(), {"name": "ContrastiveLoss"})
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    module.log = lambda *args, **kwargs: None  # outside a Trainer there is nowhere to log
    loss = module.training_step((images, labels), 0)
    loss.backward()
    assert loss.ndim == 0 and module.embedder.neck.linear.weight.grad is not None


def test_a_frozen_backbone_gets_no_gradient_and_keeps_its_batch_norm_statistics() -> None:
    module = _module(OptimizerConfig(), {"name": "ContrastiveLoss"}, freeze_backbone_epochs=1)
    module.log = lambda *args, **kwargs: None
    module.train()
    module.on_train_epoch_start()  # epoch 0 of 1 frozen
    norms = [m for m in module.embedder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    module.training_step((images, labels), 0).backward()
    assert norms and all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    assert all(p.grad is None for p in module.embedder.backbone.parameters())
    assert module.embedder.neck.linear.weight.grad is not None
    module.freeze_backbone_epochs = 0  # as after the frozen epochs
    module.on_train_epoch_start()
    module.training_step((images, labels), 0).backward()
    assert all(p.grad is not None for p in module.embedder.backbone.parameters())
    assert not all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
