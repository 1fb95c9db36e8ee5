"""RetrievalResult: the metrics of one evaluation, its query counts and, for approximate search, recall."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedlab.retrieval.recall import RecallRecord


@dataclass(frozen=True)
class RetrievalResult:
    """The outcome of one evaluation.

    metrics: requested metric name -> value in [0, 1] (micro or macro average as requested).
    n_queries: queries evaluated, with or without positives.
    n_queries_without_positives: queries whose gallery holds no item of their label (R = 0); excluded
    from the averages or scored 0, as requested.
    per_class: label -> metric name -> mean over that label's averaged queries, when requested.
    search_recall: for approximate methods, recall@k of the index against exact search on a sample.
    """

    metrics: dict[str, float]
    n_queries: int
    n_queries_without_positives: int
    per_class: dict[int, dict[str, float]] | None = None
    search_recall: RecallRecord | None = field(default=None)

    def to_markdown(self) -> str:
        """The metrics (4 decimals) and the query counts as a Markdown table, which reads as plain text
        too: what `print(result)` shows, and what a notebook renders."""
        rows = [(name, f"{value:.4f}") for name, value in self.metrics.items()]
        rows += [
            ("n_queries", str(self.n_queries)),
            ("n_queries_without_positives", str(self.n_queries_without_positives)),
        ]
        if self.search_recall is not None:
            recall = self.search_recall
            rows.append((f"{recall.method} recall@{recall.k} vs exact", f"{recall.recall:.4f}"))
        width = max(len("metric"), *(len(name) for name, _ in rows))
        digits = max(len("value"), *(len(value) for _, value in rows))
        lines = [
            f"| {'metric':<{width}} | {'value':>{digits}} |",
            f"|{'-' * (width + 2)}|{'-' * (digits + 1)}:|",
        ]
        lines += [f"| {name:<{width}} | {value:>{digits}} |" for name, value in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the metrics, n_queries and n_queries_without_positives (plus per_class with string
        keys and the approximate search recall, when present)."""
        out: dict[str, Any] = dict(self.metrics)
        out["n_queries"] = self.n_queries
        out["n_queries_without_positives"] = self.n_queries_without_positives
        if self.per_class is not None:
            out["per_class"] = {str(label): dict(values) for label, values in self.per_class.items()}
        if self.search_recall is not None:
            out["search_recall"] = {
                "method": self.search_recall.method,
                "k": self.search_recall.k,
                "n_sampled_queries": self.search_recall.n_queries,
                "recall": self.search_recall.recall,
            }
        return out
