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


#: Grid keys whose values name a block's class: each value replaces the whole block (`{name: VALUE}`), so
#: one loss's arguments are not handed to the next. A value that names the config's own block keeps it.
BLOCK_NAME_KEYS = ("loss.name", "miner.name", "loss.miner.name")


def _set_axis(variant: dict[str, Any], key: str, value: Any) -> None:
    if key not in BLOCK_NAME_KEYS:
        set_dotted(variant, key, value)
        return
    block_key = key.removesuffix(".name")
    if key.startswith("loss.") and isinstance(variant.get("loss"), list):
        raise ConfigError(
            f"grid.{key} needs a single loss block, but the config's loss is a list; "
            "list whole blocks under grid.loss instead"
        )
    node: Any = variant
    for part in block_key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping) and node.get("name") == value:
        return
    set_dotted(variant, block_key, {"name": value})


def expand_grid(
    raw: Mapping[str, Any], extra_axes: Sequence[tuple[str, list[Any]]] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every combination of the config's own grid and the command line's, as (label, raw config).

    The label names the combination, e.g. `loss=CircleLoss(m=0.4, gamma=80) optimizer.lr=0.001`.
    A value of `loss.name`, `miner.name` or `loss.miner.name` replaces that whole block with
    `{name: VALUE}` (applied before the other axes, so `loss.m` on the same grid still reaches it).
    """
    base = {key: value for key, value in raw.items() if key != "grid"}
    axes: list[tuple[str, list[Any]]] = []
    for key, values in dict(raw.get("grid") or {}).items():
        check_dotted_key(key.split("."))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values")
        axes.append((key, values))
    axes.extend(extra_axes)
    # Block replacements first, outer blocks before inner ones, then the other axes, which may set a
    # replaced block's arguments.
    order = sorted(range(len(axes)), key=lambda i: (axes[i][0] not in BLOCK_NAME_KEYS, axes[i][0].count(".")))
    if not axes:
        yield "default", copy.deepcopy(base)
        return
    for combination in itertools.product(*(values for _, values in axes)):
        variant = copy.deepcopy(base)
        for index in order:
            _set_axis(variant, axes[index][0], copy.deepcopy(combination[index]))
        parts = [f"{key}={_value_label(value)}" for (key, _), value in zip(axes, combination, strict=True)]
        yield " ".join(parts), variant
