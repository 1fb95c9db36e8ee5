"""format_metrics_table: a RetrievalResult as a rich table for the terminal."""

from __future__ import annotations

from typing import Any

from embedlab.evaluation.results import RetrievalResult


def format_metrics_table(result: RetrievalResult, title: str | None = "Retrieval metrics") -> Any:
    """A rich Table of the metrics (4 decimals) followed by the query counts."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    table.add_section()
    table.add_row("n_queries", str(result.n_queries))
    table.add_row("n_queries_without_positives", str(result.n_queries_without_positives))
    if result.search_recall is not None:
        recall = result.search_recall
        table.add_row(f"{recall.method} recall@{recall.k} vs exact", f"{recall.recall:.4f}")
    return table
