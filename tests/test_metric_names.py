"""Metric names: the forms of METRICS.md, parsed without numpy."""

from __future__ import annotations

import pytest

from embedlab.metric_names import DEFAULT_METRICS, MetricSpec, parse_metric, parse_metrics


def test_unknown_metric_names_list_the_valid_forms() -> None:
    with pytest.raises(ValueError, match=r"precision_at_<k>.*Did you mean 'map_at_100'"):
        parse_metrics(["map@100"])
    for bad in ("precision_at_0", "recall_at_05", "ndcg", "map_at_", "map,map"):
        with pytest.raises(ValueError):
            parse_metrics(bad)
    assert [s.k for s in parse_metrics("precision_at_5,map_at_r,map_at_20")] == [5, None, 20]


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("precision_at_1", MetricSpec("precision_at_1", "precision_at_k", 1)),
        ("recall_at_10", MetricSpec("recall_at_10", "recall_at_k", 10)),
        ("map_at_100", MetricSpec("map_at_100", "map_at_k", 100)),
        ("r_precision", MetricSpec("r_precision", "r_precision")),
        ("map_at_r", MetricSpec("map_at_r", "map_at_r")),
        ("map", MetricSpec("map", "map")),
        ("mrr", MetricSpec("mrr", "mrr")),
    ],
)
def test_each_form_parses_to_its_kind_and_cutoff(name: str, spec: MetricSpec) -> None:
    assert parse_metric(name) == spec


def test_the_defaults_parse_and_names_must_be_strings() -> None:
    assert [spec.name for spec in parse_metrics(DEFAULT_METRICS)] == list(DEFAULT_METRICS)
    with pytest.raises(TypeError, match="metric names are strings, got int"):
        parse_metric(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        parse_metrics([])
