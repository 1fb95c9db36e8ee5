"""Indexes with an ensemble, test-time views, whitening, DBA and query expansion: the stored vectors
and the searches equal what the pieces compute by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedlab.data.sources import read_folder
from embedlab.embeddings.encoder import EnsembleMember
from embedlab.index.manifest import WHITENING_FILE
from embedlab.index.search import open_searcher
from embedlab.index.store import load_index
from embedlab.models.inference import embed
from embedlab.models.tta import TestTimeAugmentation
from embedlab.pipelines.index import IndexSteps, add_to_gallery_index, build_gallery_index
from embedlab.retrieval.ensemble import concatenate_embeddings
from embedlab.retrieval.expansion import database_augmentation, weighted_neighbour_sum
from embedlab.retrieval.postprocessing import StepConfig
from embedlab.retrieval.whitening import PCAWhitening
from embedlab.serving.calibrate import calibrate_index
from embedlab.training.run_dir import load_run


@pytest.fixture(scope="module")
def second_run(deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedlab.config import load_config
    from embedlab.training.fit import fit

    cfg, _ = load_config(deployment.run_dir / "config.yaml", ["train.seed=1", "model.embedding_dim=12"])
    return fit(cfg, tmp_path_factory.mktemp("second") / "run", progress=False).run_dir


def gallery_vectors(deployment, runs: list[Path], weights: list[float], tta: TestTimeAugmentation | None):
    images = read_folder(deployment.gallery, 16, 3).images
    images.paths = [path.resolve() for path in images.paths]
    parts = [embed(load_run(run).embedder, images, tta=tta) for run in runs]
    return concatenate_embeddings(parts, weights), images


def test_ensemble_tta_whitening_and_query_expansion(deployment, second_run, tmp_path) -> None:
    flip = TestTimeAugmentation(flip=True)
    steps = IndexSteps(
        ensemble=[EnsembleMember(second_run, 0.5)],
        tta=flip,
        postprocessing=[
            StepConfig(name="whiten", args={"dim": 8}),
            StepConfig(name="qe", args={"k": 2, "alpha": 3}),
        ],
    )
    built = build_gallery_index(
        deployment.run_dir, [deployment.gallery], tmp_path / "index", steps=steps, progress=False
    )
    manifest = built.manifest
    assert [record.weight for record in manifest.models] == [1.0, 0.5]
    assert manifest.ensemble[0].embedding_dim == 12 and manifest.vector_dim == 8
    assert manifest.postprocessing.tta_flip
    assert [step.model_dump() for step in manifest.postprocessing.steps] == [
        {"name": "whiten", "args": {"dim": 8, "fit_on": "gallery"}},
        {"name": "qe", "args": {"k": 2, "alpha": 3.0}},
    ]
    assert (tmp_path / "index" / WHITENING_FILE).is_file()

    combined, images = gallery_vectors(deployment, [deployment.run_dir, second_run], [1.0, 0.5], flip)
    whitening = PCAWhitening.fit(combined, 8)
    expected = whitening.transform(combined)
    order = {path: n for n, path in enumerate(str(p) for p in images.paths)}
    rows = [order[item.path] for item in built.items]
    np.testing.assert_allclose(built.embeddings, expected[rows], atol=1e-5)

    loaded = load_index(tmp_path / "index")
    np.testing.assert_allclose(loaded.whitening.projection, built.whitening.projection)
    searcher = open_searcher(tmp_path / "index")
    query = deployment.new_identities / "whale_x" / "0.png"
    pixels = np.stack([searcher.decode(query.read_bytes(), str(query))])
    first = embed(load_run(deployment.run_dir).embedder, _tensor_images(pixels), tta=flip)
    second = embed(load_run(second_run).embedder, _tensor_images(pixels), tta=flip)
    vector = whitening.transform(concatenate_embeddings([first, second], [1.0, 0.5]))
    np.testing.assert_allclose(searcher.embed(pixels), vector, atol=1e-5)
    stored = np.asarray(loaded.embeddings)
    scores = vector @ stored.T
    top2 = np.argsort(-scores[0])[:2]
    expanded = weighted_neighbour_sum(vector, stored, scores[:, top2], top2[None, :], 3.0)
    expected_ids = np.argsort(-(expanded @ stored.T)[0], kind="stable")[:5]
    hits = searcher.search_files([query], 5)[0].hits
    assert [hit.id for hit in hits] == expected_ids.tolist()
    assert hits[0].score == pytest.approx(float((expanded @ stored.T)[0, expected_ids[0]]), abs=1e-5)

    # An index written before the steps list (whitening_dim, qe) loads and searches the same.
    path = tmp_path / "index" / "manifest.json"
    payload = json.loads(path.read_text())
    payload["postprocessing"] = {
        "l2_normalize": True,
        "similarity": "cosine",
        "tta_flip": True,
        "tta_scales": [1.0],
        "whitening_dim": 8,
        "dba": None,
        "qe": {"k": 2, "alpha": 3.0},
    }
    path.write_text(json.dumps(payload))
    assert load_index(tmp_path / "index").manifest == loaded.manifest
    old = open_searcher(tmp_path / "index").search_files([query], 5)[0].hits
    assert [(hit.id, hit.score) for hit in old] == [(hit.id, hit.score) for hit in hits]


def _tensor_images(pixels: np.ndarray):
    import torch

    from embedlab.data.images import InMemoryImages

    return InMemoryImages(labels=torch.zeros(len(pixels), dtype=torch.long), images=torch.from_numpy(pixels))


def test_dba_index_stores_augmented_vectors_and_refuses_to_grow(deployment, tmp_path) -> None:
    index_dir = tmp_path / "dba"
    built = build_gallery_index(
        deployment.run_dir,
        [deployment.gallery],
        index_dir,
        steps=IndexSteps(postprocessing=[StepConfig(name="dba", args={"k": 2, "alpha": 1.0})]),
        progress=False,
    )
    plain = np.asarray(deployment.built.embeddings)
    np.testing.assert_allclose(built.embeddings, database_augmentation(plain, 2, 1.0), atol=1e-5)
    with pytest.raises(ValueError, match="database-side augmentation"):
        add_to_gallery_index(index_dir, [deployment.new_identities / "whale_x" / "0.png"], progress=False)
    with pytest.raises(ValueError, match="calibrate with --queries"):
        calibrate_index(index_dir, progress=False)
    point = calibrate_index(index_dir, queries=[deployment.calibration], objective="best_f1", progress=False)
    assert -1.0 <= point.threshold <= 1.0


def test_index_build_command_takes_the_steps(deployment, second_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from embedlab.cli import app

    out = tmp_path / "cli-index"
    result = CliRunner().invoke(
        app,
        ["index", "build", str(deployment.run_dir), "--gallery", str(deployment.gallery), "--out", str(out),
         "--ensemble", f"{second_run}:0.8", "--whiten", "6", "--qe", "1,2"],
        env={"COLUMNS": "300"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = load_index(out).manifest
    assert manifest.vector_dim == 6 and manifest.ensemble[0].weight == 0.8
    bad = CliRunner().invoke(
        app, ["index", "build", str(deployment.run_dir), "--gallery", str(deployment.gallery), "--out",
              str(tmp_path / "x"), "--dba", "two"], env={"COLUMNS": "300"},
    )  # fmt: skip
    assert bad.exit_code == 2 and "--dba takes 2 comma-separated numbers" in bad.output


def test_an_index_holds_only_steps_it_can_apply() -> None:
    with pytest.raises(ValueError, match="not 'rerank'"):
        IndexSteps(postprocessing=[StepConfig(name="rerank")])
    with pytest.raises(ValueError, match="learns its whitening on its gallery"):
        IndexSteps(postprocessing=[StepConfig(name="whiten", args={"dim": 4, "fit_on": "train"})])
