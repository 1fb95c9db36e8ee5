"""Building an index from a folder, a CSV or files, and growing it with `add`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from embedlab.index.search import open_searcher
from embedlab.index.store import load_index
from embedlab.pipelines.index import add_to_gallery_index, build_gallery_index, read_gallery


def test_a_folder_gallery_records_model_preprocessing_and_items(deployment) -> None:
    index = load_index(deployment.index_dir)
    manifest = index.manifest
    assert (
        manifest.size == 36
        and manifest.model.embedding_dim == 16
        and len(manifest.model.checkpoint_sha256) == 64
    )
    assert manifest.model.run_dir == str(deployment.run_dir.resolve())
    assert (manifest.preprocessing.channels, manifest.preprocessing.image_size) == (3, 16)
    assert manifest.faiss.kind == "flat" and manifest.faiss.requested_kind == "auto"
    assert manifest.sources[0].source == str(deployment.gallery.resolve()) and manifest.sources[0].items == 36
    assert manifest.created_at and manifest.versions["faiss-cpu"]
    assert index.items[0].label == "whale_a" and Path(index.items[0].path).is_file()
    # the stored rows are the model's embeddings of the gallery files
    searcher = open_searcher(deployment.index_dir)
    again = searcher.embed(
        np.stack([searcher.decode(Path(i.path).read_bytes(), i.path) for i in index.items[:4]])
    )
    np.testing.assert_allclose(again, np.asarray(index.embeddings[:4]), atol=1e-5)


def write_csv(path: Path, gallery: Path) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "is_gallery", "sighting", "sex"])
        for n, image in enumerate(sorted(gallery.rglob("*.png"))):
            writer.writerow([str(image), image.parent.name, int(n % 3 != 0), f"s{n}", "f" if n % 2 else "m"])
    return path


def test_a_csv_gallery_keeps_extra_columns_and_honours_is_gallery(deployment, tmp_path: Path) -> None:
    table = write_csv(tmp_path / "gallery.csv", deployment.gallery)
    index = build_gallery_index(deployment.run_dir, [table], tmp_path / "index", kind="hnsw", progress=False)
    assert len(index) == 24  # 36 rows, every third not in the gallery
    assert index.manifest.faiss.kind == "hnsw"
    first = index.items[0]
    assert first.extra == {"sighting": "s1", "sex": "f"} and first.label == "whale_a"
    assert load_index(tmp_path / "index").items == index.items


def test_loose_files_take_their_folder_name_or_the_given_label(deployment) -> None:
    files = [deployment.gallery / "whale_b" / "0.png", deployment.new_identities / "whale_x" / "1.png"]
    by_folder = read_gallery(files, 16, 3)
    assert [item.label for item in by_folder.items] == ["whale_b", "whale_x"]
    named = read_gallery(files, 16, 3, label="pod-7")
    assert [item.label for item in named.items] == ["pod-7", "pod-7"]
    with pytest.raises(ValueError, match="--label applies to image files"):
        read_gallery([deployment.gallery], 16, 3, label="pod-7")


def test_add_appends_new_files_and_skips_indexed_ones(deployment, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    build_gallery_index(deployment.run_dir, [deployment.gallery], index_dir, progress=False)
    new = sorted((deployment.new_identities / "whale_y").glob("*.png"))
    result = add_to_gallery_index(index_dir, [*new, deployment.gallery / "whale_a" / "0.png"], progress=False)
    assert (result.added, result.skipped, len(result.index)) == (3, 1, 39)
    searcher = open_searcher(index_dir)
    (found,) = searcher.search_files([new[1]], 1)
    assert found.hits[0].id == 37 and found.hits[0].label == "whale_y"
    assert searcher.index.manifest.sources[-1].items == 3
    again = add_to_gallery_index(index_dir, new, progress=False)
    assert (again.added, again.skipped, len(load_index(index_dir))) == (0, 3, 39)


def test_build_refuses_to_overwrite_without_force(deployment, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    build_gallery_index(deployment.run_dir, [deployment.new_identities], index_dir, progress=False)
    with pytest.raises(FileExistsError, match="pass --force"):
        build_gallery_index(deployment.run_dir, [deployment.gallery], index_dir, progress=False)
    rebuilt = build_gallery_index(
        deployment.run_dir, [deployment.gallery], index_dir, force=True, progress=False
    )
    assert len(rebuilt) == len(load_index(index_dir)) == 36
