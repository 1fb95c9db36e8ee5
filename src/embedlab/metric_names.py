"""Metric names of METRICS.md and their parsing, standard library only (configs check them before torch)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Average = Literal["micro", "macro"]
WithoutPositives = Literal["exclude", "zero"]
MetricKind = Literal["precision_at_k", "recall_at_k", "r_precision", "map_at_r", "map_at_k", "map", "mrr"]

DEFAULT_METRICS: tuple[str, ...] = (
    "precision_at_1",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "r_precision",
    "map_at_r",
    "map",
)
VALID_METRIC_FORMS: tuple[str, ...] = (
    "precision_at_<k>",
    "recall_at_<k>",
    "map_at_<k>",
    "r_precision",
    "map_at_r",
    "map",
    "mrr",
)
AVERAGES: tuple[Average, ...] = ("micro", "macro")
WITHOUT_POSITIVES: tuple[WithoutPositives, ...] = ("exclude", "zero")

CUTOFF_PATTERN = re.compile(r"(precision|recall|map)_at_([1-9][0-9]*)")
CUTOFF_KINDS: dict[str, MetricKind] = {
    "precision": "precision_at_k",
    "recall": "recall_at_k",
    "map": "map_at_k",
}
PLAIN_KINDS: dict[str, MetricKind] = {
    "r_precision": "r_precision",
    "map_at_r": "map_at_r",
    "map": "map",
    "mrr": "mrr",
}


@dataclass(frozen=True)
class MetricSpec:
    """One requested metric: its name (the result key), formula kind and cutoff k (None if none)."""

    name: str
    kind: MetricKind
    k: int | None = None


def parse_metric(name: str) -> MetricSpec:
    """Parse a metric name of METRICS.md ("precision_at_5", "map_at_r", ...); ValueError lists the forms."""
    if not isinstance(name, str):
        raise TypeError(f"metric names are strings, got {type(name).__name__}.")
    if name in PLAIN_KINDS:
        return MetricSpec(name, PLAIN_KINDS[name])
    match = CUTOFF_PATTERN.fullmatch(name)
    if match:
        return MetricSpec(name, CUTOFF_KINDS[match.group(1)], int(match.group(2)))
    examples = ["precision_at_1", "recall_at_10", "map_at_100", "r_precision", "map_at_r", "map", "mrr"]
    close = difflib.get_close_matches(name.replace("@", "_at_").lower(), examples, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown metric {name!r}; valid forms are {', '.join(VALID_METRIC_FORMS)} with k a positive "
        f"integer written without leading zeros (e.g. precision_at_5, map_at_100).{hint}"
    )


def parse_metrics(names: Sequence[str] | str) -> tuple[MetricSpec, ...]:
    """Parse metric names, given as a sequence or as one comma-separated string ("map_at_r,mrr")."""
    items = [part.strip() for part in names.split(",")] if isinstance(names, str) else list(names)
    if not items or any(item == "" for item in items):
        raise ValueError(f"metric list {names!r} is empty or has an empty entry.")
    specs = tuple(parse_metric(item) for item in items)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"metric {spec.name!r} is requested twice.")
        seen.add(spec.name)
    return specs
