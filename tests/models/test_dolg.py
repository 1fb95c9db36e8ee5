"""DOLG: the orthogonal projection by hand, the head on several timm families, errors that name the
key, gradients through both branches, and a real training run that leaves a loadable run folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from embedlab.config import ModelConfig, load_config
from embedlab.models import build_embedder
from embedlab.models.dolg import DOLGHead, orthogonal_component, orthogonal_fusion
from embedlab.models.pooling import POOLING
from embedlab.training.fit import fit
from embedlab.training.run_dir import load_run


def dolg_config(backbone: str = "resnet18", **changes: object) -> ModelConfig:
    settings: dict[str, object] = {
        "backbone": backbone,
        "head": "dolg",
        "dolg": {"local_dim": 16},
        "embedding_dim": 8,
    }
    return ModelConfig.model_validate({**settings, **changes})


def random_pixels(batch: int, side: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, side, side), generator=generator, dtype=torch.uint8)


def test_the_orthogonal_component_is_orthogonal_to_the_global_vector_at_every_position() -> None:
    generator = torch.Generator().manual_seed(0)
    local_map = torch.randn(3, 8, 4, 5, generator=generator)
    global_vector = torch.randn(3, 8, generator=generator)
    orthogonal = orthogonal_component(local_map, global_vector)
    assert orthogonal.shape == local_map.shape
    for b in range(3):
        unit = global_vector[b] / global_vector[b].norm()
        for h in range(4):
            for w in range(5):
                assert abs(float(orthogonal[b, :, h, w] @ unit)) < 1e-5
                # what was removed lies along the global vector
                removed = local_map[b, :, h, w] - orthogonal[b, :, h, w]
                assert torch.allclose(removed, (removed @ unit) * unit, atol=1e-5)


def test_the_orthogonal_component_by_hand_in_two_and_three_dimensions() -> None:
    # 2-D: the global vector (2, 0) keeps only the second coordinate of each local feature
    local_map = torch.tensor([[3.0, 1.0], [4.0, 1.0]]).reshape(1, 2, 1, 2)  # positions (3, 4), (1, 1)
    orthogonal = orthogonal_component(local_map, torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(orthogonal.reshape(2, 2).T, torch.tensor([[0.0, 4.0], [0.0, 1.0]]))
    # 3-D: (1, 2, 3) against (1, 1, 0): the projection is (3 / 2) (1, 1, 0), what remains (-0.5, 0.5, 3)
    orthogonal = orthogonal_component(
        torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1), torch.tensor([[1.0, 1, 0]])
    )
    assert torch.allclose(orthogonal.flatten(), torch.tensor([-0.5, 0.5, 3.0]))


def test_a_zero_global_vector_leaves_the_local_features_finite_and_unchanged() -> None:
    local_map = torch.randn(2, 4, 3, 3)
    orthogonal = orthogonal_component(local_map, torch.zeros(2, 4))
    assert torch.equal(orthogonal, local_map)


def test_fusion_puts_the_global_vector_beside_the_orthogonal_component_at_every_position() -> None:
    local_map, global_vector = torch.randn(2, 4, 3, 5), torch.randn(2, 4)
    fused = orthogonal_fusion(local_map, global_vector)
    assert fused.shape == (2, 8, 3, 5)
    assert torch.equal(fused[:, :4], global_vector[:, :, None, None].expand(2, 4, 3, 5))
    assert torch.equal(fused[:, 4:], orthogonal_component(local_map, global_vector))


@pytest.mark.parametrize(
    ("backbone", "side", "channels"),
    [("resnet18", 32, (256, 512)), ("efficientnet_b0", 32, (112, 320)), ("convnext_atto", 64, (160, 320))],
)
def test_dolg_embeds_with_timm_cnns(backbone: str, side: int, channels: tuple[int, int]) -> None:
    embedder = build_embedder(dolg_config(backbone), channels=3, image_size=side).eval()
    assert (embedder.backbone.local_channels, embedder.backbone.global_channels) == channels
    assert embedder.neck.linear.in_features == 32  # the global vector and the pooled orthogonal part
    embeddings = embedder(random_pixels(3, side))
    assert embeddings.shape == (3, 8)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)


def test_dolg_reads_channels_last_stages_of_swin() -> None:
    cfg = dolg_config("swin_tiny_patch4_window7_224", backbone_args={"img_size": 64})
    embedder = build_embedder(cfg, channels=3, image_size=64).eval()
    local_map, global_map = embedder.backbone(torch.zeros(1, 3, 64, 64))
    assert local_map.shape == (1, 384, 4, 4) and global_map.shape == (1, 768, 2, 2)
    assert embedder(random_pixels(2, 64)).shape == (2, 8)


def test_the_local_stage_is_chosen_by_index_from_either_end() -> None:
    for stage in (2, -3):
        embedder = build_embedder(dolg_config(dolg={"local_stage": stage, "local_dim": 16}), 3, 32)
        assert embedder.backbone.local_channels == 128  # resnet18's layer2


@pytest.mark.parametrize("side", [32, 48, 57])
def test_a_cnn_with_dolg_embeds_at_any_input_size(side: int) -> None:
    embedder = build_embedder(dolg_config(), channels=3, image_size=32).eval()
    assert embedder.unnormalised(random_pixels(2, 40), side).shape == (2, 8)


def test_gradients_reach_both_branches_and_both_stages_they_read() -> None:
    # resnet18's last map is 1 x 1 at 32 pixels, where GeM is the identity whatever p: the exponent's
    # gradient is rounding noise, exactly 0 for some initialisations (2 seeds in 30), so fix one
    torch.manual_seed(0)
    embedder = build_embedder(dolg_config(), channels=3, image_size=32).train()
    local_map, global_map = embedder.backbone(embedder.preprocess(random_pixels(4, 32)))
    local_map.retain_grad()
    global_map.retain_grad()
    embeddings = F.normalize(embedder.neck(embedder.pooling((local_map, global_map))), dim=-1)
    embeddings.pow(3).sum().backward()
    head = embedder.pooling
    for name, gradient in [
        ("local stage's map", local_map.grad),
        ("last stage's map", global_map.grad),
        ("multi-atrous convolution", head.local_branch[0].dilated[0].weight.grad),
        ("attention score", head.local_branch[1].score.weight.grad),
        ("global projection", head.global_projection.weight.grad),
        ("GeM exponent", head.global_pooling.p.grad),
        ("the backbone's first convolution", embedder.backbone.model.conv1.weight.grad),
    ]:
        assert gradient is not None and gradient.abs().sum() > 0, name


def test_a_backbone_without_timm_stages_is_refused_naming_the_keys() -> None:
    with pytest.raises(ValueError, match=r"model.head: dolg needs a timm backbone.*'small_cnn'"):
        build_embedder(dolg_config("small_cnn"), channels=1, image_size=28)


@pytest.mark.parametrize("stage", [4, 5, -1, -6])
def test_a_local_stage_out_of_range_names_the_key_and_the_valid_range(stage: int) -> None:
    expected = (
        rf"model.dolg.local_stage {stage} is out of range for 'resnet18'.*"
        "5 feature stages: use 0 to 3, or -5 to -2"
    )
    with pytest.raises(ValueError, match=expected):
        build_embedder(dolg_config(dolg={"local_stage": stage}), channels=3, image_size=32)


def test_a_local_weights_file_of_the_whole_model_loads_into_the_stages(tmp_path: Path) -> None:
    source = timm.create_model("resnet18", num_classes=0)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    embedder = build_embedder(dolg_config(weights_path=str(tmp_path / "resnet18.pth")), 3, 32)
    assert torch.equal(embedder.backbone.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_a_dolg_run_trains_on_digits_and_loads_back(tmp_path: Path) -> None:
    cfg, _ = load_config(
        None,
        [
            "data.dataset=digits",
            "data.validation.split=images",
            "data.image_size=32",
            "data.max_images_per_split=200",
            "data.channels=3",
            "model.backbone=resnet18",
            "model.head=dolg",
            "model.dolg={local_dim: 16}",
            "model.embedding_dim=16",
            "train.epochs=2",
            "train.batch_size=32",
            "train.max_steps_per_epoch=4",
            "loss={name: ContrastiveLoss}",
        ],
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    assert (result.run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (result.run_dir / "metrics.csv").read_text().count("\n") == 3  # header and two epochs
    assert all(math.isfinite(value) for value in result.metrics.values())
    run = load_run(result.run_dir)  # rebuilds the DOLG embedder from config.yaml; a strict state-dict load
    assert run.config.model.head == "dolg"
    embeddings = run.embedder(random_pixels(3, 32))
    assert embeddings.shape == (3, 16) and torch.isfinite(embeddings).all()


@pytest.mark.parametrize("pooling", [name for name in POOLING.names() if name != "flatten"])
def test_the_head_sizes_its_global_projection_by_the_poolings_report(pooling: str) -> None:
    head = DOLGHead(6, 10, local_dim=4, dilations=[1, 2], global_pooling=POOLING.build(pooling)).eval()
    assert head.global_projection.in_features == head.global_pooling.output_features(10)
    assert head((torch.rand(2, 6, 8, 8), torch.rand(2, 10, 4, 4))).shape == (2, head.out_features)
