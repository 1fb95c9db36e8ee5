"""The embedding map: UMAP when importable, t-SNE otherwise (tested here, umap-learn being absent), PCA."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from embedlab.reporting import embedding_map
from embedlab.reporting.embedding_map import plot_embedding_map, project_2d, resolve_method, sample_rows


def _clusters(per_cluster: int = 40, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, dims)) * 10
    labels = np.repeat(np.arange(3), per_cluster)
    return (centres[labels] + rng.normal(size=(labels.size, dims))).astype(np.float32), labels


def _nearest_neighbour_agreement(points: np.ndarray, labels: np.ndarray) -> float:
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(axis=1)] == labels).mean())


def test_auto_is_tsne_without_umap_and_asking_for_umap_then_fails(monkeypatch) -> None:
    monkeypatch.setattr(embedding_map, "umap_installed", lambda: False)
    assert resolve_method("auto") == "tsne"
    with pytest.raises(ValueError, match="pip install umap-learn"):
        resolve_method("umap")
    with pytest.raises(ValueError, match="auto, umap, tsne, pca"):
        resolve_method("mds")  # type: ignore[arg-type]


def test_the_tsne_fallback_keeps_clusters_apart(monkeypatch) -> None:
    monkeypatch.setattr(embedding_map, "umap_installed", lambda: False)
    embeddings, labels = _clusters()
    points, method = project_2d(embeddings, "auto")
    assert method == "t-SNE" and points.shape == (120, 2) and np.isfinite(points).all()
    assert _nearest_neighbour_agreement(points, labels) == 1.0


def test_umap_is_used_when_it_can_be_imported(monkeypatch) -> None:
    calls = []

    class FakeUMAP:
        def __init__(self, n_components: int, random_state: int) -> None:
            calls.append((n_components, random_state))

        def fit_transform(self, x: np.ndarray) -> np.ndarray:
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    monkeypatch.setattr(embedding_map, "umap_installed", lambda: True)
    embeddings, _ = _clusters(per_cluster=5)
    points, method = project_2d(embeddings, "auto", seed=7)
    assert method == "UMAP" and calls == [(2, 7)]
    np.testing.assert_allclose(points, embeddings[:, :2] * 2, rtol=1e-6)


def test_pca_of_points_on_a_plane_keeps_their_distances() -> None:
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(2, 6))
    embeddings = rng.normal(size=(30, 2)) @ plane
    points, method = project_2d(embeddings, "pca")
    before = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
    after = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert method == "PCA"
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_too_few_points_for_a_neighbourhood_map_fall_back_to_pca_and_one_is_refused() -> None:
    assert project_2d(np.eye(3, 4), "tsne")[1] == "PCA"
    with pytest.raises(ValueError, match="N >= 2"):
        project_2d(np.ones((1, 4)), "pca")


def test_sample_rows_caps_the_points_reproducibly() -> None:
    assert sample_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = sample_rows(1000, 100, seed=3)
    assert rows.size == 100 and np.unique(rows).size == 100 and (np.diff(rows) > 0).all()
    assert rows.tolist() == sample_rows(1000, 100, seed=3).tolist()


def test_the_map_colours_by_label_and_names_the_classes() -> None:
    embeddings, labels = _clusters(per_cluster=4)
    figure = plot_embedding_map(embeddings[:, :2], labels, ["cat", "dog", "owl"], "map")
    axes = figure.axes[0]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["cat", "dog", "owl"]
    colours = {tuple(c.get_facecolor()[0]) for c in axes.collections}
    assert len(axes.collections) == 3 and len(colours) == 3
