"""RetrievalResult.to_dict."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from embedlab.evaluation import evaluate_retrieval


def test_result_to_dict_is_json_ready_with_exactly_the_requested_keys(
    tie_heavy: Callable[..., np.ndarray],
) -> None:
    x = tie_heavy(30, seed=9)
    labels = np.random.default_rng(9).integers(0, 3, 30)
    result = evaluate_retrieval(x, labels, metrics="precision_at_5,map_at_100")
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == ["precision_at_5", "map_at_100", "n_queries", "n_queries_without_positives"]
