"""The .npy files of `embedlab evaluate`: loaded, checked and evaluated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embedlab.evaluation import DEFAULT_METRICS, evaluate_embedding_files


def test_embedding_files_are_loaded_and_checked(
    tmp_path: object,
    reference: Callable[..., Any],
    assert_matches: Callable[..., None],
    tie_heavy: Callable[..., np.ndarray],
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    q, g = tie_heavy(20, seed=17), tie_heavy(30, seed=18)
    rng = np.random.default_rng(17)
    ql, gl, groups = rng.integers(0, 3, 20), rng.integers(0, 3, 30), rng.integers(0, 5, 50)
    for name, array in {"q": q, "ql": ql, "g": g, "gl": gl, "groups": groups, "col": ql[:, None]}.items():
        np.save(folder / f"{name}.npy", array)
    result = evaluate_embedding_files(
        folder / "q.npy",
        folder / "ql.npy",
        folder / "g.npy",
        folder / "gl.npy",
        folder / "groups.npy",
        ["map_at_r", "mrr"],
    )
    expected, _, _ = reference(
        q, ql, g, gl, query_groups=groups[:20], gallery_groups=groups[20:], metrics=["map_at_r", "mrr"]
    )
    assert_matches(result.metrics, expected)
    assert list(evaluate_embedding_files(folder / "q.npy", folder / "ql.npy").metrics) == list(
        DEFAULT_METRICS
    )
    with pytest.raises(ValueError, match=r"col.npy' holds shape \(20, 1\); expected \(20,\)"):
        evaluate_embedding_files(folder / "q.npy", folder / "col.npy")
    with pytest.raises(ValueError, match=r"groups.npy' holds shape \(50,\); expected \(20,\)"):
        evaluate_embedding_files(folder / "q.npy", folder / "ql.npy", groups_path=folder / "groups.npy")
    with pytest.raises(ValueError, match="query embeddings file .*ql.npy' holds shape"):
        evaluate_embedding_files(folder / "ql.npy", folder / "ql.npy")
