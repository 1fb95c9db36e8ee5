import pytest
import timm
import torch

from embedlab.models import backbones
from embedlab.models.backbones import create_backbone


def test_small_cnn_gives_a_feature_map() -> None:
    backbone = create_backbone("small_cnn", in_chans=1)
    features = backbone(torch.rand(2, 1, 28, 28))
    assert features.shape == (2, backbone.num_features, 7, 7)


def test_timm_cnn_with_one_input_channel() -> None:
    backbone = create_backbone("resnet18", in_chans=1)
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, 512, 1, 1)


def test_transformer_tokens_become_a_grid() -> None:
    backbone = create_backbone("vit_tiny_patch16_224", in_chans=3).eval()
    features = backbone(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, backbone.num_features, 14, 14)


def test_channels_last_family_is_permuted() -> None:
    backbone = create_backbone("swin_tiny_patch4_window7_224", in_chans=3).eval()
    features = backbone(torch.rand(1, 3, 224, 224))
    assert features.shape == (1, backbone.num_features, 7, 7)


@pytest.mark.parametrize("name", ["small_cnn", "small_resnet", "pml_mnist_example", "resnet18"])
def test_every_backbone_is_built_by_timms_factory(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    timms_create_model = timm.create_model

    def create_model(model_name: str, **kwargs: object) -> torch.nn.Module:
        built.append(model_name)
        return timms_create_model(model_name, **kwargs)

    monkeypatch.setattr(backbones.timm, "create_model", create_model)
    assert create_backbone(name, in_chans=1).num_features > 0
    assert built == [name]


def test_unknown_backbone_suggests_a_name() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet17'.*Did you mean"):
        create_backbone("resnet17", in_chans=3)
    with pytest.raises(ValueError, match=r"Did you mean 'small_cnn'.*one of: small_cnn, small_resnet"):
        create_backbone("smal_cnn", in_chans=1)


def test_small_cnn_has_no_pretrained_weights() -> None:
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_backbone("small_cnn", in_chans=1, pretrained=True)


def test_backbone_arguments_reach_the_model_and_unknown_ones_are_named() -> None:
    backbone = create_backbone("small_cnn", in_chans=1, kwargs={"widths": (8, 16)})
    assert backbone.num_features == 16
    with pytest.raises(TypeError, match="does not take 'width'"):
        create_backbone("small_cnn", in_chans=1, kwargs={"width": 8})
    with pytest.raises(TypeError, match="backbone_args"):
        create_backbone("resnet18", in_chans=3, kwargs={"no_such_argument": 1})


def test_small_resnet_without_blocks_is_small_cnn() -> None:
    plain = create_backbone("small_cnn", in_chans=1, kwargs={"widths": (8, 16, 32)}).eval()
    residual = create_backbone(
        "small_resnet", in_chans=1, kwargs={"widths": (8, 16, 32), "blocks": (0, 0, 0)}
    ).eval()
    residual.model.load_state_dict(plain.model.state_dict())
    images = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(residual(images), plain(images))


def test_small_resnet_blocks_add_their_input() -> None:
    backbone = create_backbone(
        "small_resnet", in_chans=1, kwargs={"widths": (8, 16), "blocks": (0, 1)}
    ).eval()
    block = backbone.model.features[-1]
    # a zero last BatchNorm scale silences the branch, so the block passes its (non-negative) input on
    torch.nn.init.zeros_(block.branch[-1].weight)
    stem = backbone.model.features[:-1]
    images = torch.rand(2, 1, 28, 28)
    features = backbone(images)
    assert features.shape == (2, 16, 14, 14)
    torch.testing.assert_close(features, stem(images))


def test_small_resnet_names_mismatched_widths_and_blocks() -> None:
    with pytest.raises(ValueError, match=r"widths \[8, 16\], blocks \[1\]"):
        create_backbone("small_resnet", in_chans=1, kwargs={"widths": (8, 16), "blocks": (1,)})


@pytest.mark.parametrize(
    ("name", "channels", "image_size"),
    [("small_cnn", 1, 28), ("pml_mnist_example", 1, 28), ("resnet18", 1, 57), ("inception_v3", 3, 139)],
)
def test_the_map_size_is_exact_and_touches_nothing(name: str, channels: int, image_size: int) -> None:
    backbone = create_backbone(name, in_chans=channels)
    state = {key: value.clone() for key, value in backbone.state_dict().items()}
    generator_state = torch.random.get_rng_state()
    size = backbone.feature_map_size(channels, image_size)
    assert torch.equal(torch.random.get_rng_state(), generator_state)
    assert all(torch.equal(value, state[key]) for key, value in backbone.state_dict().items())
    assert backbone.training
    with torch.no_grad():
        features = backbone.eval()(torch.rand(1, channels, image_size, image_size))
    assert size == features.shape[-2:]
