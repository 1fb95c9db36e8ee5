"""The collectives of DDP training, checked against one process.

Two processes are simulated inside this one: torch.distributed's calls are replaced by functions that
hand each simulated process what the real collectives would, so the arithmetic is checked in
milliseconds. test_fit_ddp.py runs real processes on the gloo backend.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from embedlab.training import distributed
from embedlab.training.distributed import gather_global_batch, gather_rows, resolve_layout, slice_of


class SimulatedProcesses:
    """torch.distributed for `world_size` processes run one after the other in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, world_size: int) -> None:
        self.world_size = world_size
        self.rank = 0
        #: what each process contributes to an all_gather, filled in before the calls
        self.slices: list[torch.Tensor] = []
        self.gathered_objects: list[object] = []
        for name in ("get_rank", "get_world_size", "all_gather", "gather_object"):
            monkeypatch.setattr(distributed.dist, name, getattr(self, name))

    def get_rank(self) -> int:
        return self.rank

    def get_world_size(self) -> int:
        return self.world_size

    def all_gather(self, outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
        source = self.slices if tensor.is_floating_point() else self.label_slices
        for output, part in zip(outputs, source, strict=True):
            output.copy_(part)

    def gather_object(self, obj: object, outputs: list | None, dst: int = 0) -> None:
        self.gathered_objects.append(obj)
        if outputs is not None:
            outputs[:] = self.gathered_objects


@pytest.mark.parametrize(
    "make_loss",
    [losses.ContrastiveLoss, lambda: losses.ArcFaceLoss(num_classes=3, embedding_size=3)],
    ids=["pair loss", "loss with class weights"],
)
def test_the_global_batch_gives_every_weight_its_single_process_gradient(monkeypatch, make_loss) -> None:
    """Each process scores the loss on all rows; DDP then averages the processes' gradients. The average
    must be the gradient of one process training on the whole batch, for the model's weights and for
    the loss's own (ArcFace's class weights, which pytorch-metric-learning's wrapper would double)."""
    torch.manual_seed(0)
    images, labels = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = torch.nn.Linear(4, 3)
    torch.manual_seed(1)
    reference_loss = make_loss()
    reference_model = torch.nn.Linear(4, 3)
    reference_model.load_state_dict(model.state_dict())
    reference_loss(reference_model(images), labels).backward()
    reference = [p.grad for p in [*reference_model.parameters(), *reference_loss.parameters()]]

    world = SimulatedProcesses(monkeypatch, world_size=2)
    world.slices = [model(part).detach() for part in images.split(4)]
    world.label_slices = list(labels.split(4))
    summed: list[torch.Tensor] | None = None
    values = []
    for rank in range(2):
        world.rank = rank
        torch.manual_seed(1)
        loss = make_loss()
        replica = torch.nn.Linear(4, 3)
        replica.load_state_dict(model.state_dict())
        embeddings, gathered_labels = gather_global_batch(
            replica(images[4 * rank : 4 * rank + 4]), labels[4 * rank : 4 * rank + 4]
        )
        assert torch.equal(gathered_labels, labels)  # the global batch, in rank order, on every process
        value = loss(embeddings, gathered_labels)
        value.backward()
        values.append(float(value.detach()))
        grads = [p.grad for p in [*replica.parameters(), *loss.parameters()]]
        summed = grads if summed is None else [a + b for a, b in zip(summed, grads, strict=True)]
    assert summed is not None
    assert values[0] == pytest.approx(values[1])  # every process holds the loss of the global batch
    for averaged, expected in zip(summed, reference, strict=True):
        torch.testing.assert_close(averaged / 2, expected, rtol=1e-5, atol=1e-6)


def _gather(monkeypatch, parts: list[np.ndarray], n_items: int) -> np.ndarray | None:
    world = SimulatedProcesses(monkeypatch, world_size=len(parts))
    result = None
    # Process 0 receives last, once every process has sent its part.
    for rank in reversed(range(len(parts))):
        world.rank = rank
        ids = parts[rank]
        result = gather_rows(ids[:, None] * 10.0, ids, n_items)
    return result


def test_validation_rows_come_back_in_item_order_from_uneven_slices(monkeypatch) -> None:
    shares = [slice_of(7, rank, 3) for rank in range(3)]
    assert [len(s) for s in shares] == [2, 2, 3]
    rows = _gather(monkeypatch, [np.arange(s.start, s.stop) for s in shares], 7)
    assert rows is not None
    assert rows[:, 0].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]


@pytest.mark.parametrize(
    ("parts", "n_items", "message"),
    [
        ([np.array([0, 1, 2]), np.array([2, 3])], 5, "5 rows for 5 items .1 missing, 1 more than once"),
        ([np.array([0, 1]), np.array([2])], 4, "3 rows for 4 items .1 missing"),
        ([np.array([0, 1]), np.array([2, 9])], 4, "1 unknown"),
    ],
)
def test_a_lost_or_doubled_validation_item_is_an_error(monkeypatch, parts, n_items, message) -> None:
    with pytest.raises(RuntimeError, match=message):
        _gather(monkeypatch, parts, n_items)


def test_slices_cover_every_item_once() -> None:
    for n_items in (0, 1, 5, 64):
        for world_size in (1, 2, 3):
            covered = [i for rank in range(world_size) for i in slice_of(n_items, rank, world_size)]
            assert covered == list(range(n_items))


def test_layout_defaults_to_one_process(monkeypatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    layout = resolve_layout()
    assert (layout.devices, layout.num_nodes, layout.rank, layout.world_size) == (1, 1, 0, 1)


def test_layout_follows_torchrun(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    layout = resolve_layout()
    assert (layout.devices, layout.num_nodes, layout.rank) == (2, 2, 3)
    with pytest.raises(ValueError, match="torchrun started 4 processes"):
        resolve_layout(devices=4)


def test_layout_of_a_process_started_by_lightning(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    assert resolve_layout(devices=2, num_nodes=2).rank == 3
