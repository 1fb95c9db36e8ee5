"""format_metrics_table."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embedlab.evaluation import DEFAULT_METRICS, evaluate_retrieval, format_metrics_table


def test_metrics_table_lists_every_metric_and_the_counts(tie_heavy: Callable[..., np.ndarray]) -> None:
    from rich.console import Console

    x = tie_heavy(30, seed=19)
    result = evaluate_retrieval(x, np.random.default_rng(19).integers(0, 3, 30))
    console = Console(record=True, width=100)
    console.print(format_metrics_table(result))
    text = console.export_text()
    for name in [*DEFAULT_METRICS, "n_queries", "n_queries_without_positives"]:
        assert name in text
