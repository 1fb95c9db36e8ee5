"""Building an index from a folder, a CSV or files, and growing it with `add`, also from several
processes at once."""

from __future__ import annotations

import csv
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from embedlab.index.search import Searcher, open_searcher
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


def test_a_csv_gallery_is_cropped_to_its_bounding_boxes(deployment, tmp_path: Path) -> None:
    """Each gallery photo pasted into a larger canvas of another colour, with its box: the index holds
    the vectors of the photos themselves."""
    from PIL import Image

    originals = sorted(deployment.gallery.rglob("*.png"))[::6]
    table = tmp_path / "boxes.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "x_1", "y_1", "x_2", "y_2"])
        for n, original in enumerate(originals):
            photo = Image.open(original).convert("RGB")
            canvas = Image.new("RGB", (photo.width * 3, photo.height * 2), (128, 128, 128))
            left, top = photo.width + n % 3, photo.height // 2
            canvas.paste(photo, (left, top))
            canvas.save(tmp_path / f"scene{n}.png")
            box = (left, top, left + photo.width, top + photo.height)
            writer.writerow([f"scene{n}.png", original.parent.name, *box])
    cropped = build_gallery_index(deployment.run_dir, [table], tmp_path / "cropped", progress=False)
    plain = build_gallery_index(deployment.run_dir, originals, tmp_path / "plain", progress=False)
    np.testing.assert_allclose(cropped.embeddings, plain.embeddings, atol=1e-6)
    assert cropped.items[0].extra["x_1"] == str(Image.open(originals[0]).width)  # the box stays as metadata


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


def held(outputs: list[str]) -> list[int]:
    return [int(re.search(r"holds (\d+)", output).group(1)) for output in outputs]  # type: ignore[union-attr]


def test_concurrent_adds_of_different_images_keep_every_image_once(
    deployment, tmp_path: Path, run_together, make_image_folder
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(deployment.index_dir, index_dir)
    before = [item.path for item in load_index(index_dir).items]
    image_sets = [
        sorted(make_image_folder(tmp_path / f"set{n}", classes=2, per_class=2, size=16).rglob("*.png"))
        for n in range(3)
    ]
    outputs = run_together([["index", "add", str(index_dir), *map(str, images)] for images in image_sets])
    # one after another: each add found the previous one's images and printed the size it left
    assert sorted(held(outputs)) == [40, 44, 48], outputs
    paths = [item.path for item in load_index(index_dir).items]
    assert len(paths) == 48 and len(set(paths)) == 48
    assert set(paths) == set(before) | {str(path.resolve()) for images in image_sets for path in images}
    assert paths[:36] == before


def test_concurrent_adds_of_the_same_images_add_them_once(
    deployment, tmp_path: Path, run_together, make_image_folder
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(deployment.index_dir, index_dir)
    images = sorted(make_image_folder(tmp_path / "same", classes=1, per_class=3, size=16).rglob("*.png"))
    outputs = run_together([["index", "add", str(index_dir), *map(str, images)]] * 3)
    assert held(outputs) == [39] * 3
    assert sorted(output.strip().split(";")[0] for output in outputs) == [
        "added 0 images (skipped 3 already indexed)",
        "added 0 images (skipped 3 already indexed)",
        "added 3 images",
    ]
    paths = [item.path for item in load_index(index_dir).items]
    assert len(paths) == 39 and paths[36:] == [str(path.resolve()) for path in images]


def test_the_writer_lock_is_released_when_an_add_fails(
    deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_image_folder
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(deployment.index_dir, index_dir)
    images = sorted(make_image_folder(tmp_path / "more", classes=1, per_class=2, size=16).rglob("*.png"))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("embedding failed")

    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "embed_images", broken)
        with pytest.raises(RuntimeError, match="embedding failed"):
            add_to_gallery_index(index_dir, images, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        add_to_gallery_index(index_dir, [tmp_path / "missing.png"], progress=False)
    assert (
        add_to_gallery_index(index_dir, [deployment.gallery / "whale_a" / "0.png"], progress=False).added == 0
    )
    # after a failure, an early return and a success: another add takes the lock without waiting
    results = []
    adding = threading.Thread(
        target=lambda: results.append(add_to_gallery_index(index_dir, images, progress=False)), daemon=True
    )
    adding.start()
    adding.join(timeout=120)
    assert not adding.is_alive(), "the add after a failed one still waits for the writers' lock"
    assert results[0].added == 2 and len(load_index(index_dir)) == 38
