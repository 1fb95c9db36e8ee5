"""Indexes for large galleries: built from the shards of `embedlab embed` one shard at a time, IVF-PQ,
split over several faiss files and searched as one, with recall@10 against exact search recorded."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.embeddings.shards import Shard, ShardSpec, write_items, write_manifest, write_shard, write_spec
from embedlab.index.search import open_searcher
from embedlab.index.shards import FaissSettings, build_index_from_shards
from embedlab.index.store import load_index
from embedlab.pipelines.embed import embed_to_shards
from embedlab.pipelines.index import add_to_gallery_index

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def gallery_shards(deployment, tmp_path_factory) -> Path:
    """The deployment's gallery (36 images) embedded by its run into 4 shards of up to 10."""
    out = tmp_path_factory.mktemp("large") / "shards"
    embed_to_shards(deployment.run_dir, deployment.gallery, out, shard_size=10, progress=False)
    return out


def test_an_index_from_shards_split_over_files_answers_as_the_index_from_images(
    deployment, gallery_shards, tmp_path
) -> None:
    settings = FaissSettings(nlist=4, nprobe=4, shards=3)  # every cell visited: IVF answers exactly
    manifest = build_index_from_shards(gallery_shards, tmp_path / "index", kind="ivf", faiss=settings)
    assert manifest.size == 36 and manifest.faiss.shards == 3 and manifest.faiss.ivf_nlist == 4
    assert manifest.faiss.recall is not None and manifest.faiss.recall.recall == 1.0
    assert manifest.model == deployment.built.manifest.model
    files = sorted(p.name for p in (tmp_path / "index").glob("*.faiss"))
    assert files == ["index-000.faiss", "index-001.faiss", "index-002.faiss"]

    index = load_index(tmp_path / "index")
    built = deployment.built  # flat, from the same images through `index build --gallery`
    assert [(i.path, i.label) for i in index.items] == [(i.path, i.label) for i in built.items]
    np.testing.assert_allclose(np.asarray(index.embeddings), np.asarray(built.embeddings), atol=1e-6)
    queries = np.asarray(built.embeddings[::5])
    np.testing.assert_array_equal(index.search(queries, 6)[1], built.search(queries, 6)[1])
    # searchable with the model that embedded the shards, as any index
    hits = open_searcher(tmp_path / "index").search_files([deployment.gallery / "whale_c" / "0.png"], 3)
    assert hits[0].hits[0].label == "whale_c"


def test_images_added_to_a_sharded_index_join_its_last_file(deployment, gallery_shards, tmp_path) -> None:
    build_index_from_shards(gallery_shards, tmp_path / "index", kind="flat", faiss=FaissSettings(shards=2))
    added = add_to_gallery_index(tmp_path / "index", [deployment.new_identities], progress=False)
    assert added.added == 6
    index = load_index(tmp_path / "index")
    assert len(index) == 42 and index.faiss_index.ntotal == 42
    new_row = np.asarray(index.embeddings[40:41])
    assert index.search(new_row, 1)[1][0, 0] == 40


def test_a_missing_shard_file_is_named(gallery_shards, tmp_path) -> None:
    build_index_from_shards(gallery_shards, tmp_path / "index", kind="flat", faiss=FaissSettings(shards=2))
    (tmp_path / "index" / "index-001.faiss").unlink()
    with pytest.raises(ValueError, match="inconsistent: index-001.faiss missing"):
        load_index(tmp_path / "index")


def _synthetic_shards(folder: Path, model: dict, preprocessing: dict, n: int = 3000, dim: int = 16) -> None:
    """n unit rows of 300 identities in shards of 1000, with the deployment's model record."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(300, dim))
    labels = rng.integers(300, size=n)
    rows = centres[labels] + rng.normal(scale=0.1, size=(n, dim))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    spec = ShardSpec(
        model=model,
        preprocessing=preprocessing,
        source="synthetic",
        n_items=n,
        shard_size=1000,
        embedding_dim=dim,
        label_names=[str(i) for i in range(300)],
    )
    write_spec(folder, spec)
    write_items(
        folder, ({"path": f"/synthetic/{i}.png", "label": str(labels[i]), "extra": {}} for i in range(n))
    )
    for shard in range(spec.n_shards):
        ids = np.arange(shard * 1000, (shard + 1) * 1000)
        write_shard(folder, shard, Shard(ids, labels[ids], rows[ids]))
    write_manifest(folder, spec)


def test_an_ivfpq_index_records_its_codes_and_its_recall(deployment, tmp_path) -> None:
    record = deployment.built.manifest
    _synthetic_shards(
        tmp_path / "shards",
        record.model.model_dump(mode="json"),
        record.preprocessing.model_dump(mode="json"),
    )
    settings = FaissSettings(nlist=16, pq_m=8, train_size=1500, shards=2)
    manifest = build_index_from_shards(tmp_path / "shards", tmp_path / "index", kind="ivfpq", faiss=settings)
    faiss_record = manifest.faiss
    assert (faiss_record.kind, faiss_record.pq_m, faiss_record.train_size) == ("ivfpq", 8, 1500)
    assert faiss_record.recall is not None and faiss_record.recall.n_queries == 1000
    assert faiss_record.recall.recall > 0.5
    index = load_index(tmp_path / "index")
    assert index.faiss_index.ntotal == 3000
    rows = np.asarray(index.embeddings[:50])
    found = index.search(rows, 1)[1][:, 0]
    same_identity = [index.items[i].label == index.items[j].label for i, j in enumerate(found)]
    assert np.mean(same_identity) >= 0.9  # through 8-byte codes, each row lands among its identity


def test_the_command_builds_from_shards_and_reports_recall(gallery_shards, tmp_path) -> None:
    args = ["index", "build", "--embeddings", str(gallery_shards), "--out", str(tmp_path / "index")]
    result = CliRunner().invoke(app, [*args, "--kind", "hnsw", "--index-shards", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "indexed 36 images into" in result.output and "(hnsw index in 2 files, 16-d" in result.output
    assert "recall@10 against exact search: " in result.output
    mixed = CliRunner().invoke(app, [*args, "--force", "--whiten", "4"], env={"COLUMNS": "200"})
    assert mixed.exit_code == 2 and "--embeddings brings its own model and images" in mixed.output
    neither = CliRunner().invoke(app, ["index", "build", "--out", str(tmp_path / "other")])
    assert neither.exit_code == 2 and "give RUN_DIR and --gallery, or --embeddings" in neither.output


KILLED_BUILD = textwrap.dedent(
    """
    import os, signal
    import faiss
    from embedlab.index.shards import FaissSettings, build_index_from_shards

    real_write, calls = faiss.write_index, []

    def write_then_die(index, path):
        calls.append(path)
        real_write(index, path)
        if len(calls) == 2:  # killed between the second and the third faiss file of the new index
            os.kill(os.getpid(), signal.SIGKILL)

    faiss.write_index = write_then_die
    build_index_from_shards(SHARDS, OUT, kind="flat", faiss=FaissSettings(shards=3), force=True)
    """
)


def test_a_build_killed_mid_write_leaves_the_previous_index(gallery_shards, tmp_path, start_forked) -> None:
    out = tmp_path / "index"
    build_index_from_shards(gallery_shards, out, kind="flat")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_BUILD)
    process = start_forked(script, SHARDS=str(gallery_shards), OUT=str(out))
    process.join(timeout=300)
    assert process.exitcode == -9
    assert (tmp_path / ".index.incoming").is_dir(), "the kill should leave the half-written index"
    previous = load_index(out)  # the load also clears the leftovers
    assert previous.manifest.faiss.shards == 1 and len(previous) == 36
    # the writers' lock file stays beside the index (the kill released the lock itself)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.lock", "index", "killed.py"]
