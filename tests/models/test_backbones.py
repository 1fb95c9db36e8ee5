import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import huggingface_hub
import pytest
import timm
import timm.models._builder as timm_builder
import timm.models._hub as timm_hub
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from embedlab.models import backbones, hub
from embedlab.models.backbones import create_backbone, create_stage_features

#: Every way timm 1.0 reaches the network for pretrained weights (the hub, a URL, a cached file), and
#: the socket under them all.
HUB_DOWNLOADS = [
    (timm_builder, "load_state_dict_from_hf"),
    (timm_builder, "load_state_dict_from_url"),
    (timm_builder, "download_cached_file"),
    (timm_hub, "load_state_dict_from_hf"),
    (timm_hub, "hf_hub_download"),
    (timm_hub, "download_url_to_file"),
    (huggingface_hub, "hf_hub_download"),
    (torch.hub, "load_state_dict_from_url"),
    (socket.socket, "connect"),
]


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


def test_drop_path_through_backbone_args_reaches_every_block_of_a_timm_model() -> None:
    from timm.layers import DropPath

    backbone = create_backbone("mobilenetv2_100", in_chans=3, kwargs={"drop_path_rate": 0.2})
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, DropPath)]
    # timm spreads the rate linearly over the blocks, rising towards drop_path_rate
    assert rates and 0.15 < max(rates) <= 0.2 and rates == sorted(rates) and rates[0] < 0.05
    plain = create_backbone("mobilenetv2_100", in_chans=3)
    assert not any(isinstance(m, DropPath) for m in plain.modules())


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


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> Callable[[Exception], list[str]]:
    """Makes every download function of HUB_DOWNLOADS raise `error`; returns the list of those called."""

    def unreachable(error: Exception) -> list[str]:
        calls: list[str] = []
        for owner, name in HUB_DOWNLOADS:

            def refuse(*args: object, _name: str = name, **kwargs: object) -> None:
                calls.append(_name)
                raise error

            monkeypatch.setattr(owner, name, refuse)
        return calls

    return unreachable


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_weights_path_is_loaded_without_contacting_the_hub(
    tmp_path: Path, unreachable_hub: Callable[[Exception], list[str]]
) -> None:
    source = create_backbone("resnet18", in_chans=3)
    path = tmp_path / "resnet18.pth"
    torch.save(source.model.state_dict(), path)
    calls = unreachable_hub(ConnectionError("the hub was contacted"))
    loaded = create_backbone("resnet18", in_chans=3, pretrained=True, weights_path=path)
    assert calls == []
    assert _same_tensors(source.model, loaded.model)
    # timm's ImageNet statistics still come with the model, as with the hub's weights
    assert loaded.pretrained_normalisation == source.pretrained_normalisation


def test_a_weights_path_for_feature_stages_is_loaded_without_contacting_the_hub(
    tmp_path: Path, unreachable_hub: Callable[[Exception], list[str]]
) -> None:
    source = create_stage_features("resnet18", in_chans=3, local_stage=-2)
    path = tmp_path / "stages.pth"
    torch.save(source.model.state_dict(), path)
    calls = unreachable_hub(ConnectionError("the hub was contacted"))
    loaded = create_stage_features("resnet18", 3, -2, pretrained=True, weights_path=path)
    assert calls == []
    assert _same_tensors(source.model, loaded.model)


def test_small_cnn_takes_a_weights_path_with_pretrained_set(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save(create_backbone("small_cnn", in_chans=1).model.state_dict(), path)
    assert create_backbone("small_cnn", in_chans=1, pretrained=True, weights_path=path).num_features > 0


@pytest.mark.parametrize(
    "error",
    [
        OSError(101, "Network is unreachable"),
        httpx.ConnectError("[Errno -3] Temporary failure in name resolution"),
        LocalEntryNotFoundError("cannot find the requested files in the local cache"),
    ],
    ids=["os", "httpx", "huggingface_hub"],
)
def test_an_unreachable_hub_is_one_error_naming_the_two_keys_that_avoid_it(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def unreachable(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise error

    # resnet18's default weights (timm/resnet18.a1_in1k) come from the Hugging Face hub; the host
    # answers (hub.py's probe passes) but the download fails
    monkeypatch.setattr(hub, "host_reachable", lambda *args, **kwargs: True)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", unreachable)
    with pytest.raises(ValueError, match="pretrained weights of 'resnet18'") as raised:
        create_backbone("resnet18", in_chans=3, pretrained=True)
    message = str(raised.value)
    assert "model.pretrained=false" in message and "model.weights_path=FILE" in message
    assert type(error).__name__ in message
    assert len(calls) == 1
