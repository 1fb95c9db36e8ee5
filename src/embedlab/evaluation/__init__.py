"""Retrieval evaluation: the metrics of METRICS.md, query/gallery protocols and scenarios."""

from embedlab.evaluation.engine import Rescorer, evaluate_retrieval
from embedlab.evaluation.files import EmbeddingFiles, evaluate_embedding_files, load_embedding_files
from embedlab.evaluation.results import RetrievalResult
from embedlab.evaluation.scenarios import evaluate_scenarios
from embedlab.evaluation.shards import evaluate_shards
from embedlab.evaluation.tables import format_metrics_table
from embedlab.metric_names import DEFAULT_METRICS, VALID_METRIC_FORMS, MetricSpec, parse_metric, parse_metrics

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
