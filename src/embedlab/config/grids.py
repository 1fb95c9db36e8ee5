"""Grids for `compare`: `--grid KEY=V1,V2` options and every combination of a config's grid axes."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from embedlab.config.loading import ConfigError, check_dotted_key, set_dotted
from embedlab.config.schema import LossConfig


def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,...` from the command line; each value read as YAML."""
    key, sep, values = option.partition("=")
    if not sep or not values:
        raise ConfigError(f"expected --grid KEY=V1,V2,..., got {option!r}")
    check_dotted_key(key.strip().split("."))
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


def _value_label(value: Any) -> str:
    """A readable name for a grid value: a block by its class and arguments, a list of blocks joined."""
    if isinstance(value, Mapping) and "name" in value:
        return LossConfig.model_validate(value).label()
    if isinstance(value, list) and value and all(isinstance(v, Mapping) and "name" in v for v in value):
        return " + ".join(_block_label(v) for v in value)
    return str(value)


def _block_label(block: Mapping[str, Any]) -> str:
    config = LossConfig.model_validate(block)
    return config.label() if config.weight == 1.0 else f"{config.weight:g}*{config.label()}"


def expand_grid(
    raw: Mapping[str, Any], extra_axes: Sequence[tuple[str, list[Any]]] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every combination of the config's own grid and the command line's, as (label, raw config).

    The label names the combination, e.g. `loss=CircleLoss(m=0.4, gamma=80) optimizer.lr=0.001`.
    """
    base = {key: value for key, value in raw.items() if key != "grid"}
    axes: list[tuple[str, list[Any]]] = []
    for key, values in dict(raw.get("grid") or {}).items():
        check_dotted_key(key.split("."))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values")
        axes.append((key, values))
    axes.extend(extra_axes)
    if not axes:
        yield "default", copy.deepcopy(base)
        return
    for combination in itertools.product(*(values for _, values in axes)):
        variant = copy.deepcopy(base)
        parts = []
        for (key, _), value in zip(axes, combination, strict=True):
            set_dotted(variant, key, copy.deepcopy(value))
            parts.append(f"{key}={_value_label(value)}")
        yield " ".join(parts), variant
