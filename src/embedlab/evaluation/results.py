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
