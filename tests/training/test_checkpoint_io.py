import pytest
import torch

from embedlab.training import checkpoint_io
from embedlab.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save


def test_save_replaces_the_file_whole(tmp_path) -> None:
    path = tmp_path / "c.ckpt"
    atomic_torch_save({"x": torch.ones(2)}, path)
    atomic_torch_save({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "w": torch.ones(4)}, path)

    def torn_write(obj, stream):
        stream.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io.torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
