import logging

import pytest
import torch
from torch import nn

from embedlab.models.backbones import create_backbone
from embedlab.models.weights import LoadedWeights, load_local_weights, load_torch_file, read_state_dict


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def _tensors(model: nn.Module) -> int:
    return sum(not key.endswith("num_batches_tracked") for key in model.state_dict())


def test_weights_load_by_name_and_say_so_in_one_logged_line(tmp_path, caplog) -> None:
    source = create_backbone("resnet18", in_chans=3).model
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    target = create_backbone("resnet18", in_chans=3).model
    with caplog.at_level(logging.INFO, logger="embedlab.models.weights"):
        loaded = load_local_weights(target, path)
    n = _tensors(target)
    assert loaded == LoadedWeights(path, "name", n, n)
    assert [r.getMessage() for r in caplog.records] == [f"loaded {n} of {n} tensors by name from {path}"]
    assert _same(source, target)


def test_weights_with_other_names_load_by_position_skipping_a_classifier(tmp_path) -> None:
    source = create_backbone("resnet18", in_chans=3).model
    # another library's names for the same tensors, in the same order (BatchNorm counters keep their suffix)
    renamed = {f"net.{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(source.state_dict().items())}
    renamed["classifier.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": renamed}, path)
    target = create_backbone("resnet18", in_chans=3).model
    loaded = load_local_weights(target, path)
    n = _tensors(target)
    assert (loaded.by, loaded.loaded, loaded.total, loaded.unused) == ("position", n, n, 1)
    assert str(loaded) == (
        f"loaded {n} of {n} tensors by position from {path} (left out 1 file tensor the model lacks)"
    )
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


class RunsCode:
    """A pickle that would call a function when loaded: what weights_only=True must refuse."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_pickle_that_runs_code_is_a_clear_error_naming_the_file(tmp_path, capsys) -> None:
    import pickle

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": RunsCode()}))
    with pytest.raises(ValueError, match=r"weights file .*evil.pth cannot be loaded safely"):
        read_state_dict(path)
    assert "this ran while loading" not in capsys.readouterr().out


def test_a_torn_checkpoint_is_a_clear_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "torn.ckpt"
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, whole)
    path.write_bytes(whole.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"checkpoint .*torn.ckpt cannot be loaded safely"):
        load_torch_file(path)
