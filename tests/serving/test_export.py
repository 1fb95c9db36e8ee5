"""ONNX export: the graph embeds like torch, carries its metadata, and a failed check leaves no file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from embedlab.config import load_config
from embedlab.index.search import open_searcher
from embedlab.serving import export as export_module
from embedlab.serving.export import ExportError, export_onnx
from embedlab.training.fit import fit


def test_the_exported_graph_embeds_gallery_images_like_the_server(deployment, tmp_path: Path) -> None:
    report = export_onnx(deployment.run_dir, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4 and report.path == tmp_path / "model.onnx"
    assert (report.channels, report.image_size, report.embedding_dim) == (3, 16, 16)
    searcher = open_searcher(deployment.index_dir)
    files = sorted(deployment.gallery.rglob("*.png"))[:5]
    pixels = np.stack([searcher.decode(path.read_bytes(), str(path)) for path in files])
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(["embeddings"], {"images": pixels})
    assert embeddings.shape == (5, 16)
    np.testing.assert_allclose(embeddings, searcher.embed(pixels), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    metadata = {entry.key: entry.value for entry in onnx.load(str(report.path)).metadata_props}
    assert metadata["embedlab.checkpoint_sha256"] == searcher.index.manifest.model.checkpoint_sha256
    assert "(batch, 3, 16, 16)" in metadata["embedlab.input"]


def test_the_default_output_is_in_the_run_folder(deployment, tmp_path: Path) -> None:
    run = Path(shutil.copytree(deployment.run_dir, tmp_path / "run"))
    assert export_onnx(run).path == run / "model.onnx" and (run / "model.onnx").is_file()


def test_a_difference_over_the_tolerance_fails_and_writes_nothing(
    deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "max_abs_difference", lambda *args, **kwargs: 3e-4)
    with pytest.raises(ExportError, match=r"differ from torch's by up to 0.0003, above the tolerance 0.0001"):
        export_onnx(deployment.run_dir, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_dolg_run_exports_and_onnxruntime_embeds_like_torch(tmp_path: Path) -> None:
    cfg, _ = load_config(
        None,
        [
            "data.dataset=digits",
            "data.validation.split=images",
            "data.image_size=32",
            "data.channels=3",
            "data.max_images_per_split=100",
            "model.backbone=resnet18",
            "model.head=dolg",
            "model.dolg={local_dim: 16}",
            "model.embedding_dim=16",
            "train.batch_size=16",
            "train.max_steps_per_epoch=2",
            "loss={name: ContrastiveLoss}",
        ],
    )
    run_dir = fit(cfg, tmp_path / "run", progress=False).run_dir
    report = export_onnx(run_dir, tmp_path / "dolg.onnx")
    assert report.max_abs_diff <= 1e-4
    assert (report.channels, report.image_size, report.embedding_dim) == (3, 32, 16)
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    (embeddings,) = session.run(["embeddings"], {"images": pixels})
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
