"""Retrieval evaluation: the metrics of METRICS.md, query/gallery protocols and scenarios."""

from embedlab.evaluation.engine import (
    DEFAULT_METRICS,
    VALID_METRIC_FORMS,
    EmbeddingFiles,
    MetricSpec,
    Rescorer,
    RetrievalResult,
    evaluate_embedding_files,
    evaluate_retrieval,
    evaluate_scenarios,
    format_metrics_table,
    load_embedding_files,
    parse_metric,
    parse_metrics,
)
from embedlab.evaluation.shards import evaluate_shards

__all__ = [
    "DEFAULT_METRICS",
    "VALID_METRIC_FORMS",
    "EmbeddingFiles",
    "MetricSpec",
    "Rescorer",
    "RetrievalResult",
    "evaluate_embedding_files",
    "evaluate_retrieval",
    "evaluate_scenarios",
    "evaluate_shards",
    "format_metrics_table",
    "load_embedding_files",
    "parse_metric",
    "parse_metrics",
]
