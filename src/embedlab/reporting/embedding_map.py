"""A 2-D map of embeddings coloured by label: UMAP when umap-learn is installed, else t-SNE or PCA.

UMAP (McInnes et al. 2018) and t-SNE (van der Maaten & Hinton 2008) keep neighbourhoods, which is what
retrieval depends on; PCA keeps the directions of largest variance and is shown when asked for, or when
there are too few points for a neighbourhood method. Distances between far-apart clusters on a UMAP or
t-SNE map mean little; which points sit together is what the map shows.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Literal

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from embedlab.reporting.grids import label_name

MapMethod = Literal["auto", "umap", "tsne", "pca"]
MAP_METHODS: tuple[MapMethod, ...] = ("auto", "umap", "tsne", "pca")

#: Points drawn at most: t-SNE's cost grows with them, and a map of a few thousand already reads well.
DEFAULT_MAX_POINTS = 1000
# t-SNE is run on the first principal components, as scikit-learn's documentation advises for
# embeddings of many dimensions: it removes noise and makes the neighbour search cheaper.
_TSNE_INPUT_DIMS = 50
_MIN_NEIGHBOURHOOD_POINTS = 5


def umap_installed() -> bool:
    return importlib.util.find_spec("umap") is not None


def resolve_method(method: MapMethod) -> Literal["umap", "tsne", "pca"]:
    """ "auto" is UMAP when umap-learn is installed, else t-SNE; asking for UMAP without it is an error."""
    if method not in MAP_METHODS:
        raise ValueError(f"map method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    if method == "auto":
        return "umap" if umap_installed() else "tsne"
    if method == "umap" and not umap_installed():
        raise ValueError("map method 'umap' needs umap-learn: pip install umap-learn (or use tsne or pca)")
    return method


def sample_rows(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Up to `max_points` row indices of n, drawn at random with a fixed seed, in ascending order."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def project_2d(embeddings: np.ndarray, method: MapMethod = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Points (N, 2) float64 of embeddings (N, D), and the name of the method that made them."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a map needs embeddings of shape (N, D) with N >= 2, got {x.shape}")
    chosen = resolve_method(method)
    if chosen != "pca" and x.shape[0] < _MIN_NEIGHBOURHOOD_POINTS:
        chosen = "pca"
    if chosen == "umap":
        import umap

        points = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
        return np.asarray(points, dtype=np.float64), "UMAP"
    from sklearn.decomposition import PCA

    if chosen == "pca":
        points = PCA(n_components=min(2, x.shape[1]), random_state=seed).fit_transform(x)
        return np.pad(points, ((0, 0), (0, 2 - points.shape[1]))).astype(np.float64), "PCA"
    from sklearn.manifold import TSNE

    if x.shape[1] > _TSNE_INPUT_DIMS and x.shape[0] > _TSNE_INPUT_DIMS:
        x = PCA(n_components=_TSNE_INPUT_DIMS, random_state=seed).fit_transform(x)
    # perplexity must stay below the number of points; 30 is scikit-learn's default.
    perplexity = min(30.0, (x.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    # One OpenMP thread: on a shared 2-core machine the Barnes-Hut gradient's threads spun against the
    # other load (1,000 points: 26 s with 2 threads, 4 s with 1).
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x).astype(np.float64), "t-SNE"


def plot_embedding_map(
    points: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None, title: str
) -> Figure:
    """Scatter of points (N, 2) coloured by label; a legend when there are at most 20 labels."""
    figure = Figure(figsize=(7.5, 6), layout="constrained")
    axes = figure.subplots()
    classes = np.unique(labels)
    few = classes.size <= 20
    cmap = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20" if few else "turbo"]
    for position, label in enumerate(classes):
        mask = labels == label
        # The qualitative palettes are indexed by colour; beyond 20 labels, spread labels over turbo.
        colour = cmap(position) if few else cmap(position / (classes.size - 1))
        axes.scatter(
            points[mask, 0],
            points[mask, 1],
            s=8,
            color=colour,
            alpha=0.8,
            linewidths=0,
            label=label_name(int(label), class_names),
        )
    if few:
        axes.legend(fontsize=8, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=10)
    return figure
