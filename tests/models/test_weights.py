import pytest
import torch
from torch import nn

from embedlab.models.backbones import create_backbone
from embedlab.models.weights import load_local_weights


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_weights_load_by_name(tmp_path) -> None:
    source = create_backbone("resnet18", in_chans=3).model
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    target = create_backbone("resnet18", in_chans=3).model
    assert load_local_weights(target, path) == "by name"
    assert _same(source, target)


def test_weights_with_other_names_load_by_position_skipping_a_classifier(tmp_path) -> None:
    source = create_backbone("resnet18", in_chans=3).model
    # another library's names for the same tensors, in the same order (BatchNorm counters keep their suffix)
    renamed = {f"net.{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(source.state_dict().items())}
    renamed["classifier.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": renamed}, path)
    target = create_backbone("resnet18", in_chans=3).model
    assert load_local_weights(target, path) == "by position"
    assert _same(source, target)


def test_weights_of_another_model_are_refused_with_details(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save(create_backbone("small_cnn", in_chans=1).model.state_dict(), path)
    with pytest.raises(ValueError, match=r"w.pth does not fit the model.*missing by name"):
        load_local_weights(create_backbone("resnet18", in_chans=3).model, path)


def test_backbone_factory_takes_a_local_file(tmp_path) -> None:
    source = create_backbone("small_cnn", in_chans=1)
    path = tmp_path / "w.pth"
    torch.save(source.model.state_dict(), path)
    loaded = create_backbone("small_cnn", in_chans=1, weights_path=path)
    assert _same(source.model, loaded.model)
