"""Search with the model that built the index; any other model is refused with a clear error. A reloading
searcher follows its folder as writers replace it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from embedlab.config import ModelConfig
from embedlab.data.decoding import ImageRejectedError
from embedlab.index.search import ModelMismatchError, ReloadingSearcher, open_searcher
from embedlab.index.store import load_index
from embedlab.models.embedder import build_embedder


def test_a_gallery_image_finds_itself_then_its_identity(deployment) -> None:
    searcher = open_searcher(deployment.index_dir)
    query = deployment.gallery / "whale_e" / "3.png"
    (result,) = searcher.search_files([query], 6)
    assert result.hits[0].path == str(query.resolve()) and result.hits[0].score == pytest.approx(1, abs=1e-5)
    assert {hit.label for hit in result.hits} == {"whale_e"}
    assert result.new_identity is False


def test_the_open_set_decision_follows_the_threshold(deployment) -> None:
    searcher = open_searcher(deployment.index_dir)
    queries = np.asarray(searcher.index.embeddings[:3])
    threshold = searcher.threshold
    assert threshold is not None
    # each row's top score is 1 (itself): a threshold just above it makes every query new
    searcher.index.manifest.open_set.threshold = 1.0001
    assert [r.new_identity for r in searcher.search_embeddings(queries, 2)] == [True] * 3
    searcher.index.manifest.open_set.threshold = threshold
    assert [r.new_identity for r in searcher.search_embeddings(queries, 2)] == [False] * 3


def test_search_files_names_a_bad_file(deployment, tmp_path: Path) -> None:
    searcher = open_searcher(deployment.index_dir)
    notes = tmp_path / "notes.png"
    notes.write_text("not really a png")
    with pytest.raises(ImageRejectedError, match="notes.png is not an image"):
        searcher.search_files([notes], 3)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        searcher.search_files([tmp_path / "missing.png"], 3)


def copy_run(run_dir: Path, out: Path, embedding_dim: int | None = None, nudge: bool = False) -> Path:
    """A copy of a run whose checkpoint makes embeddings of another size, or has nudged weights."""
    shutil.copytree(run_dir, out)
    checkpoint_path = out / "checkpoints" / "best.ckpt"
    if embedding_dim is not None:
        config = yaml.safe_load((out / "config.yaml").read_text())
        config["model"]["embedding_dim"] = embedding_dim
        (out / "config.yaml").write_text(yaml.safe_dump(config))
        shape = json.loads((out / "model.json").read_text())
        (out / "model.json").write_text(json.dumps({**shape, "embedding_dim": embedding_dim}))
        embedder = build_embedder(ModelConfig(**config["model"]), shape["channels"], shape["image_size"])
        state = {f"embedder.{k}": v for k, v in embedder.state_dict().items()}
        torch.save({"state_dict": state}, checkpoint_path)
    if nudge:
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        weight = checkpoint["state_dict"]["embedder.neck.linear.weight"]
        checkpoint["state_dict"]["embedder.neck.linear.weight"] = weight + 0.01
        torch.save(checkpoint, checkpoint_path)
    return out


def test_a_model_with_another_embedding_size_is_refused(deployment, tmp_path: Path) -> None:
    other = copy_run(deployment.run_dir, tmp_path / "other", embedding_dim=8)
    with pytest.raises(ModelMismatchError, match=r"embeddings of size 16, but .* size 8"):
        open_searcher(deployment.index_dir, run_dir=other)


def test_a_retrained_checkpoint_is_refused_by_its_hash(deployment, tmp_path: Path) -> None:
    other = copy_run(deployment.run_dir, tmp_path / "other", nudge=True)
    with pytest.raises(ModelMismatchError, match=r"sha256 .* but .*best.ckpt has sha256") as caught:
        open_searcher(deployment.index_dir, run_dir=other)
    assert "--run" in str(caught.value) and "embedlab index build" in str(caught.value)


def test_an_identical_copy_of_the_run_is_accepted(deployment, tmp_path: Path) -> None:
    copy = copy_run(deployment.run_dir, tmp_path / "moved")
    searcher = open_searcher(deployment.index_dir, run_dir=copy)
    assert len(searcher.index) == 36


@pytest.fixture
def index_copy(deployment, tmp_path: Path) -> Path:
    return Path(shutil.copytree(deployment.index_dir, tmp_path / "index"))


def test_a_reloading_searcher_follows_adds_and_calibrations(
    deployment, index_copy: Path, tmp_path: Path
) -> None:
    from embedlab.pipelines.index import add_to_gallery_index
    from embedlab.serving.calibrate import calibrate_index

    reloading = ReloadingSearcher(index_copy)
    first = reloading.current()
    assert reloading.current() is first and len(first.index) == 36  # nothing written: the same searcher
    new = sorted((deployment.new_identities / "whale_x").glob("*.png"))
    add_to_gallery_index(index_copy, new, progress=False)
    grown = reloading.current()
    assert len(grown.index) == 39 and len(first.index) == 36  # a request holding `first` keeps its index
    assert grown.pipeline is first.pipeline  # the same model: not loaded again
    (found,) = grown.search_files([new[2]], 1)
    assert (found.hits[0].id, found.hits[0].label) == (38, "whale_x")
    assert reloading.current() is grown
    calibrate_index(index_copy, target_fmr=0.1, progress=False)
    calibrated = reloading.current()
    assert calibrated.threshold == load_index(index_copy).manifest.open_set.threshold  # type: ignore[union-attr]
    assert calibrated.threshold != first.threshold and len(calibrated.index) == 39


def test_a_reloading_searcher_loads_another_model_with_an_index_rebuilt_by_it(
    deployment, index_copy: Path, tmp_path: Path
) -> None:
    from embedlab.pipelines.index import build_gallery_index

    reloading = ReloadingSearcher(index_copy)
    first = reloading.current()
    other = copy_run(deployment.run_dir, tmp_path / "other", nudge=True)
    build_gallery_index(other, [deployment.new_identities], index_copy, force=True, progress=False)
    rebuilt = reloading.current()
    assert len(rebuilt.index) == 6 and rebuilt.pipeline is not first.pipeline
    (found,) = rebuilt.search_files([deployment.new_identities / "whale_y" / "1.png"], 1)
    assert found.hits[0].label == "whale_y" and found.hits[0].score == pytest.approx(1, abs=1e-5)


def test_a_reloading_searcher_keeps_its_index_while_the_folder_is_missing_or_broken(
    index_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloading = ReloadingSearcher(index_copy)
    first = reloading.current()
    # between a writer's two renames there is no folder: nothing to load yet
    os.replace(index_copy, tmp_path / "aside")
    assert reloading.current() is first
    os.replace(tmp_path / "aside", index_copy)
    assert reloading.current() is first
    # a folder that fails its checks is logged once and not served
    items = index_copy / "items.jsonl"
    items.write_text("".join(items.read_text().splitlines(keepends=True)[:30]))
    manifest = index_copy / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")  # a new stamp, as a write would leave
    with caplog.at_level(logging.WARNING, logger="embedlab.index.search"):
        assert reloading.current() is first and reloading.current() is first
    (warning,) = caplog.records
    assert "cannot be loaded" in warning.getMessage() and "items.jsonl rows: 30" in warning.getMessage()
