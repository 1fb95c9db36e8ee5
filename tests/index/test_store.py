"""The index folder: faiss kinds, round trips, growth, refusals, crash safety of the folder swap, and the
writers' lock."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedlab.index import manifest as index_module
from embedlab.index.gallery import GalleryIndex, GalleryItem
from embedlab.index.manifest import (
    FaissRecord,
    IndexManifest,
    ModelRecord,
    PreprocessingRecord,
    SourceRecord,
    choose_kind,
)
from embedlab.index.store import load_index, write_index, writer_lock

DIM = 8


def unit_rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def manifest(kind: str = "auto", n: int = 0) -> IndexManifest:
    return IndexManifest(
        created_at="2024-01-01T00:00:00+00:00",
        updated_at="2024-01-01T00:00:00+00:00",
        model=ModelRecord(
            run_dir="/runs/x", checkpoint_sha256="ab" * 32, backbone="small_cnn", embedding_dim=DIM
        ),
        preprocessing=PreprocessingRecord(channels=3, image_size=16, mean=[0.5] * 3, std=[0.5] * 3),
        faiss=FaissRecord(kind=choose_kind(kind, n), requested_kind=kind),
    )


def make_index(n: int = 40, kind: str = "auto", seed: int = 0) -> GalleryIndex:
    items = [GalleryItem(f"/gallery/{i}.png", f"id_{i % 5}", {"camera": str(i % 2)}) for i in range(n)]
    return GalleryIndex.create(manifest(kind, n), items, unit_rows(n, seed))


def test_a_faiss_record_as_manifests_store_it_reads_and_writes_unchanged() -> None:
    """Manifests spell exact search "flat" and store recall as k, n_queries, recall: both stay so, and
    map onto embedlab.retrieval's kind "exact" and its RecallRecord."""
    stored = {
        "kind": "ivf",
        "requested_kind": "auto",
        "ivf_nlist": 40,
        "recall": {"k": 10, "n_queries": 1000, "recall": 0.97},
    }
    record = FaissRecord.model_validate(stored)
    assert record.index_kind == "ivf" and record.recall is not None and record.recall.recall == 0.97
    assert json.loads(record.model_dump_json()) == {
        **FaissRecord(kind="ivf", requested_kind="auto").model_dump(),
        **stored,
    }
    flat = FaissRecord.model_validate({"kind": "flat", "requested_kind": "flat"})
    assert flat.index_kind == "exact" and json.loads(flat.model_dump_json())["kind"] == "flat"
    assert {"kind": "flat", "recall": None}.items() <= json.loads(
        make_index(10).manifest.faiss.model_dump_json()
    ).items()
    built = json.loads(make_index(60, "ivf").manifest.faiss.model_dump_json())
    assert set(built["recall"]) == {"k", "n_queries", "recall"}


def test_auto_kind_follows_the_gallery_size() -> None:
    assert choose_kind("auto", 10) == "flat"
    assert choose_kind("auto", index_module.FLAT_MAX_ITEMS) == "flat"
    assert choose_kind("auto", index_module.FLAT_MAX_ITEMS + 1) == "hnsw"
    assert choose_kind("auto", index_module.HNSW_MAX_ITEMS + 1) == "ivf"
    assert choose_kind("ivf", 10) == "ivf"


@pytest.mark.parametrize(
    ("kind", "faiss_class"), [("flat", "IndexFlatIP"), ("ivf", "IndexIVFFlat"), ("hnsw", "IndexHNSWFlat")]
)
def test_each_kind_finds_every_item_first_for_itself(kind: str, faiss_class: str) -> None:
    index = make_index(300, kind)
    assert type(index.faiss_index).__name__ == faiss_class and index.manifest.faiss.kind == kind
    scores, ids = index.search(np.asarray(index.embeddings), 3)
    assert scores.shape == ids.shape == (300, 3)
    assert (ids[:, 0] == np.arange(300)).all()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    if kind == "ivf":
        assert index.manifest.faiss.ivf_nlist == index.faiss_index.nlist


def test_flat_search_equals_a_plain_ranking() -> None:
    index = make_index(50)
    queries = unit_rows(4, seed=9)
    scores, ids = index.search(queries, 7)
    for query, row_scores, row_ids in zip(queries, scores, ids, strict=True):
        similarities = [float(query @ row) for row in np.asarray(index.embeddings)]
        expected = sorted(range(50), key=lambda i: -similarities[i])[:7]
        assert row_ids.tolist() == expected
        np.testing.assert_allclose(row_scores, [similarities[i] for i in expected], atol=1e-6)


def test_k_beyond_the_gallery_returns_the_whole_gallery() -> None:
    _, ids = make_index(5).search(unit_rows(2, seed=1), 50)
    assert ids.shape == (2, 5) and sorted(ids[0].tolist()) == list(range(5))


def test_a_query_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        make_index(5).search(np.ones((1, 4), np.float32), 1)


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    built = make_index(40, "hnsw")
    write_index(built, tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    assert loaded.manifest == built.manifest and loaded.items == built.items
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), built.embeddings)
    queries = unit_rows(6, seed=3)
    for got, expected in zip(loaded.search(queries, 5), built.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "embeddings.npy",
        "index.faiss",
        "items.jsonl",
        "manifest.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no leftovers beside it


def test_extended_appends_with_ids_continuing(tmp_path: Path) -> None:
    base = make_index(10, "hnsw")
    more = [GalleryItem(f"/more/{i}.png", "new") for i in range(3)]
    rows = unit_rows(3, seed=5)
    grown = base.extended(more, rows, SourceRecord(source="more", items=3, added_at="now"))
    assert len(grown) == 13 and grown.manifest.size == 13 and grown.manifest.sources[-1].source == "more"
    _, ids = grown.search(rows, 1)
    assert ids[:, 0].tolist() == [10, 11, 12]
    write_index(grown, tmp_path / "index")
    assert load_index(tmp_path / "index").items[10:] == more


def test_an_auto_index_changes_kind_when_it_outgrows_flat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "FLAT_MAX_ITEMS", 12)
    base = make_index(10)
    assert base.manifest.faiss.kind == "flat"
    grown = base.extended(
        [GalleryItem(f"/more/{i}.png", "new") for i in range(5)],
        unit_rows(5, seed=6),
        SourceRecord(source="more", items=5, added_at="now"),
    )
    assert grown.manifest.faiss.kind == "hnsw" and type(grown.faiss_index).__name__ == "IndexHNSWFlat"
    assert grown.faiss_index.ntotal == 15


def test_an_existing_index_is_replaced_only_when_asked(tmp_path: Path) -> None:
    write_index(make_index(5), tmp_path / "index")
    with pytest.raises(FileExistsError, match="pass --force"):
        write_index(make_index(6), tmp_path / "index")
    write_index(make_index(6), tmp_path / "index", replace=True)
    assert len(load_index(tmp_path / "index")) == 6


def test_a_folder_that_is_not_an_index_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not an embedlab index"):
        write_index(make_index(5), tmp_path / "photos", replace=True)
    assert (tmp_path / "photos" / "keep.jpg").is_file()


def test_a_failed_write_leaves_the_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_index(make_index(5), tmp_path / "index")

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("faiss.write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        write_index(make_index(9), tmp_path / "index", replace=True)
    assert len(load_index(tmp_path / "index")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


CRASHING_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from embedlab.index import store as m
    from embedlab.index.gallery import GalleryIndex, GalleryItem
    from embedlab.index.store import write_index

    target, crash_at = sys.argv[1], sys.argv[2]
    manifest = m.read_manifest(m.Path(target))
    rows = np.eye(manifest.model.embedding_dim, dtype=np.float32)
    items = [GalleryItem(f"/new/{i}.png", "new") for i in range(len(rows))]
    index = GalleryIndex.create(manifest, items, rows)

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    if crash_at == "writing":
        import faiss

        faiss.write_index = die  # killed with the new folder half written
    else:
        real_replace, calls = os.replace, []

        def replace_then_die(source, destination):
            calls.append(source)
            if len(calls) == 2:  # killed after the old index moved aside, before the new one moved in
                die()
            real_replace(source, destination)

        m.os.replace = replace_then_die
    write_index(index, target, replace=True)
    """
)


@pytest.mark.parametrize("crash_at", ["writing", "between the renames"])
def test_a_writer_killed_mid_write_leaves_the_previous_index(tmp_path: Path, crash_at: str) -> None:
    target = tmp_path / "index"
    write_index(make_index(7), target)
    killed = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(target), crash_at.split()[0]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    leftovers = {p.name for p in tmp_path.iterdir()} - {"index"}
    assert leftovers, "the kill should have left a half-finished write behind"
    recovered = load_index(target)  # the next load finishes the interrupted write's clean-up
    assert len(recovered) == 7 and recovered.items[0].path == "/gallery/0.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_an_inconsistent_folder_is_a_clear_error(tmp_path: Path) -> None:
    write_index(make_index(5), tmp_path / "index")
    items = tmp_path / "index" / "items.jsonl"
    items.write_text("".join(items.read_text().splitlines(keepends=True)[:4]))
    with pytest.raises(ValueError, match=r"inconsistent.*items.jsonl rows: 4"):
        load_index(tmp_path / "index")


def test_an_unknown_manifest_key_is_named(tmp_path: Path) -> None:
    write_index(make_index(5), tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    payload = json.loads(path.read_text())
    payload["faiss"]["nprobe"] = 3
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"faiss\.nprobe"):
        load_index(tmp_path / "index")


def test_a_missing_index_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="embedlab index build"):
        load_index(tmp_path / "nothing")
    assert not os.path.exists(tmp_path / "nothing")


def test_an_old_manifest_postprocessing_record_is_read_as_the_steps_list(tmp_path: Path) -> None:
    built = make_index(10)
    write_index(built, tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    payload = json.loads(path.read_text())
    payload["postprocessing"] = {
        "l2_normalize": True,
        "similarity": "cosine",
        "tta_flip": True,
        "tta_scales": [1.0, 1.25],
        "whitening_dim": None,
        "dba": {"k": 3, "alpha": 1.0},
        "qe": {"k": 2, "alpha": 3.0},
    }
    path.write_text(json.dumps(payload))
    record = load_index(tmp_path / "index").manifest.postprocessing
    assert (record.tta_flip, record.tta_scales) == (True, [1.0, 1.25])
    assert [step.model_dump() for step in record.steps] == [
        {"name": "dba", "args": {"k": 3, "alpha": 1.0}},
        {"name": "qe", "args": {"k": 2, "alpha": 3.0}},
    ]
    assert record.whitening_dim is None and "whitening_dim" not in record.model_dump()


def test_manifest_steps_are_checked_by_the_steps_themselves(tmp_path: Path) -> None:
    write_index(make_index(5), tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    payload = json.loads(path.read_text())
    payload["postprocessing"]["steps"] = [{"name": "qe", "args": {"k": 0, "alpha": 3.0}}]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        load_index(tmp_path / "index")
    payload["postprocessing"] = {"qe": {"k": 0, "alpha": 3.0}}
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        load_index(tmp_path / "index")


def writer_lock_is_free(index_dir: Path) -> bool:
    """Whether another open of the writers' lock file could take it now (without waiting)."""
    descriptor = os.open(index_dir.parent / f".{index_dir.name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def test_the_writer_lock_is_held_inside_and_released_on_every_exit(tmp_path: Path) -> None:
    target = tmp_path / "index"
    write_index(make_index(5), target)
    with writer_lock(target):
        assert not writer_lock_is_free(target)
        # the folder lock of a load and a write, taken inside, is another lock: neither waits for it
        source = SourceRecord(source="more", items=1, added_at="now")
        write_index(
            load_index(target).extended([GalleryItem("/more/0.png", "new")], unit_rows(1, 3), source),
            target,
            replace=True,
        )
    assert writer_lock_is_free(target) and len(load_index(target)) == 6
    with pytest.raises(RuntimeError, match="failed inside"), writer_lock(target):
        raise RuntimeError("failed inside")
    assert writer_lock_is_free(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.lock", "index"]


def test_a_writer_lock_on_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"), writer_lock(tmp_path / "no" / "index"):
        pass
    assert not (tmp_path / "no").exists()


HOLD_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from embedlab.index.store import writer_lock

    with writer_lock(sys.argv[1]):
        print("holding", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writer_releases_the_writer_lock(tmp_path: Path) -> None:
    target = tmp_path / "index"
    write_index(make_index(5), target)
    killed = subprocess.run(
        [sys.executable, "-c", HOLD_AND_DIE, str(target)], capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -9 and killed.stdout == "holding\n", killed.stderr
    assert writer_lock_is_free(target)
