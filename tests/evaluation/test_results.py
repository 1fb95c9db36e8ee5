"""RetrievalResult.to_dict, and the table it prints as."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from embedlab.evaluation import RetrievalResult, evaluate_retrieval


def test_result_to_dict_is_json_ready_with_exactly_the_requested_keys(
    tie_heavy: Callable[..., np.ndarray],
) -> None:
    x = tie_heavy(30, seed=9)
    labels = np.random.default_rng(9).integers(0, 3, 30)
    result = evaluate_retrieval(x, labels, metrics="precision_at_5,map_at_100")
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data) == ["precision_at_5", "map_at_100", "n_queries", "n_queries_without_positives"]


def test_a_retrieval_result_prints_as_a_table() -> None:
    text = str(RetrievalResult({"precision_at_1": 0.5, "map_at_r": 0.123456}, 10, 2))
    lines = text.splitlines()
    assert lines[0].split("|")[1:3] == [" metric                      ", "  value "]
    assert "| precision_at_1              | 0.5000 |" in lines
    assert "| map_at_r                    | 0.1235 |" in lines
    assert "| n_queries_without_positives |      2 |" in lines
    assert "RetrievalResult(" not in text
