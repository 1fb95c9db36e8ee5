"""Exact search with torch (run on CPU tensors) against the numpy exact search: the same neighbours,
ties included; the retry on running out of memory; the device choice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.retrieval import devices, search
from embedlab.retrieval.devices import resolve_device
from embedlab.retrieval.topk import top_k
from embedlab.retrieval.torch_exact import iter_retrying_blocks
from embedlab.retrieval.torch_topk import torch_top_k

CPU_TENSORS = torch.device("cpu")


def assert_same_neighbours(*args: object, **kwargs: object) -> None:
    expected_sims, expected_ids = search(*args, **kwargs)  # type: ignore[arg-type]
    sims, ids = search(*args, **kwargs, device=CPU_TENSORS, max_memory_bytes=16 << 10)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-6, rtol=0)


def test_duplicated_gallery_rows_tie_and_are_ordered_by_index() -> None:
    rng = np.random.default_rng(0)
    gallery = np.repeat(rng.normal(size=(60, 6)).astype(np.float32), 3, axis=0)
    queries = rng.normal(size=(25, 6)).astype(np.float32)
    assert_same_neighbours(queries, gallery, 10)


def test_quantised_rows_searched_in_themselves_with_groups_match() -> None:
    rng = np.random.default_rng(1)
    rows = rng.choice([-0.5, 0.5], size=(90, 4)).astype(np.float32)
    groups = rng.integers(8, size=90)
    assert_same_neighbours(rows, rows, 15, exclude_self=True, query_groups=groups, gallery_groups=groups)


def test_fewer_items_than_k_leave_the_tail_empty_as_on_the_cpu() -> None:
    rows = np.random.default_rng(2).normal(size=(7, 3)).astype(np.float32)
    assert_same_neighbours(rows, rows, 10, exclude_self=True, metric="inner_product")
    _sims, ids = search(rows, rows, 10, exclude_self=True, device=CPU_TENSORS)
    assert (ids[:, 6:] == -1).all() and (ids[:, :6] >= 0).all()


def test_torch_top_k_ties_signed_zeros_and_exclusions_like_top_k() -> None:
    rng = np.random.default_rng(3)
    block = rng.choice(np.array([-1.0, -0.0, 0.0, 0.5, -np.inf], dtype=np.float32), size=(30, 40))
    expected = top_k(block, 12)
    got = torch_top_k(torch.from_numpy(block), 12)
    np.testing.assert_array_equal(got[1].numpy(), expected[1])
    np.testing.assert_array_equal(got[0].numpy(), expected[0])


def test_an_out_of_memory_block_is_halved_and_an_error_of_the_consumer_is_not() -> None:
    sizes: list[int] = []

    def compute(start: int, stop: int) -> tuple[int, int]:
        sizes.append(stop - start)
        if stop - start > 3:
            raise torch.cuda.OutOfMemoryError("injected")
        return start, stop

    # 8 rows fail, then 4; 2 fit, and the blocks after keep that size.
    assert list(iter_retrying_blocks(10, 8, compute)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert sizes == [8, 4, 2, 2, 2, 2, 2]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        for _block in iter_retrying_blocks(10, 2, compute):
            raise torch.cuda.OutOfMemoryError("raised by the consumer")


def test_the_device_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") is None
    assert resolve_device(CPU_TENSORS) == "cpu"
    with pytest.raises(ValueError, match=r"--device must be one of auto, cpu, cuda, cuda:N, got 'gpu0'"):
        resolve_device("gpu0", "--device")
    # torch is imported here: auto asks torch, whatever the file system says.
    assert "torch" in sys.modules
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_auto_without_torch_imported_reads_the_driver_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(devices, "_NVIDIA_GPUS", tmp_path / "gpus")
    monkeypatch.setattr(devices, "_NVIDIA_DEVICE", tmp_path / "nvidia0")
    assert not devices.nvidia_device_present()
    assert resolve_device("auto") is None
    (tmp_path / "gpus" / "0000:01:00.0").mkdir(parents=True)
    assert devices.nvidia_device_present()
