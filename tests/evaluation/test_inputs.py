"""Bad evaluation inputs are refused with errors that name the argument and the shape."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from embedlab.evaluation import evaluate_retrieval


def test_a_label_column_is_refused_not_broadcast(tie_heavy: Callable[..., np.ndarray]) -> None:
    # Regression: an (N, 1) column broadcast against (N,) labels turns mAP into values in the thousands.
    x = tie_heavy(20, seed=14)
    with pytest.raises(ValueError, match=r"query_labels must be a 1-D array.*\(20, 1\)"):
        evaluate_retrieval(x, np.zeros((20, 1), dtype=int))
    with pytest.raises(ValueError, match=r"gallery_labels must be a 1-D.*\(20, 1\)"):
        evaluate_retrieval(x, np.zeros(20, dtype=int), x, np.zeros((20, 1), dtype=int))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y: (x, y[:-1]), "has length 19"),
        (lambda x, y: (np.where(np.arange(4) == 2, np.nan, x), y), "NaN or infinite"),
        (lambda x, y: (np.where(np.arange(4) == 1, np.inf, x), y), "NaN or infinite"),
        (lambda x, y: (x, y.astype(np.float32)), "must hold integers"),
        (lambda x, y: (x[0], y), "2-D"),
        (lambda x, y: (x[:0], y[:0]), "empty"),
    ],
)
def test_bad_query_inputs_are_clear_errors(
    change: object, message: str, tie_heavy: Callable[..., np.ndarray]
) -> None:
    x, y = tie_heavy(20, seed=15), np.zeros(20, dtype=int)
    bad_x, bad_y = change(x, y)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(bad_x, bad_y)
