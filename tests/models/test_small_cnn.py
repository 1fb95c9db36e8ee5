import pytest
import timm
import torch

from embedlab.models.small_cnn import LOCAL_BACKBONES


@pytest.mark.parametrize("name", LOCAL_BACKBONES)
def test_timm_builds_every_local_backbone_by_name(name: str) -> None:
    assert name in timm.list_models()
    model = timm.create_model(name, in_chans=1).eval()
    features = model.forward_features(torch.rand(2, 1, 28, 28))
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    pooled = model.forward_head(features, pre_logits=True)
    torch.testing.assert_close(pooled, features.mean(dim=(-2, -1)))
    torch.testing.assert_close(model(torch.rand(2, 1, 28, 28)).shape, pooled.shape)


@pytest.mark.parametrize("name", LOCAL_BACKBONES)
def test_classifier_is_set_and_reset_like_timms(name: str) -> None:
    model = timm.create_model(name, in_chans=3, num_classes=10)
    images = torch.rand(2, 3, 28, 28)
    assert model(images).shape == (2, 10) and model.get_classifier().out_features == 10
    model.reset_classifier(0)
    assert model(images).shape == (2, model.num_features)
    assert not any(key.startswith("fc.") for key in model.state_dict())


@pytest.mark.parametrize("name", LOCAL_BACKBONES)
def test_pretrained_weights_and_unknown_arguments_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"backbone '{name}' has no pretrained weights"):
        timm.create_model(name, pretrained=True)
    with pytest.raises(TypeError, match="does not take 'colour'"):
        timm.create_model(name, colour="red")


def test_none_arguments_keep_the_default_as_in_timm() -> None:
    model = timm.create_model("small_cnn", widths=None, num_classes=None)
    assert model.num_features == 128 and model.num_classes == 0
