"""The reference of every config key, generated from the schema (docs/config.md is this text)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

from embedlab.config.schema import ExperimentConfig, Section


def _type_name(annotation: Any) -> str:
    """A short, table-safe name of a field's type: `int or None`, `'cosine', 'step' or 'constant'`."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in arguments)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in arguments)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in arguments)}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def reference_markdown() -> str:
    """Markdown tables of every config key: its type, default and meaning."""
    lines = [
        "# Config reference",
        "",
        "Generated from `embedlab.config` (a test keeps this file equal to `reference_markdown()`).",
        "Every key is addressed by its dotted name in YAML, in `KEY=VALUE` after the config (or "
        "`--set KEY=VALUE`) and in `--grid KEY=V1,V2`.",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        rows = []
        nested = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            candidates = [annotation, *getattr(annotation, "__args__", ())]
            inner = [c for c in candidates if isinstance(c, type) and issubclass(c, Section)]
            if inner and inner[0] is annotation:
                nested.append((inner[0], f"{prefix}{name}"))
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(exclude_defaults=False)
            rows.append(
                f"| `{prefix}{name}` | {_type_name(annotation)} | `{default!r}` | {field.description or ''} |"
            )
        if rows:
            lines.extend(["", f"## {prefix.rstrip('.') or 'top level'}", ""])
            lines.extend(["| key | type | default | meaning |", "|---|---|---|---|", *rows])
        for inner_model, name in nested:
            section(inner_model, f"{name}.")

    section(ExperimentConfig, "")
    lines += [
        "",
        "## loss and miner blocks",
        "",
        "`loss` is one block or a list of blocks. A block is `{name: CLASS, <keyword arguments of CLASS>}`",
        "with pytorch-metric-learning's class and argument names",
        "(`{name: CircleLoss, m: 0.4, gamma: 80}`) or embedlab's own heads (docs/losses.md).",
        "Four keys are embedlab's: `weight` (the block's factor in a sum of losses), `lr` (the learning",
        "rate of the block's own parameters, such as class centres), `miner` (a block",
        "`{name: MINER, ...}` that feeds this loss) and `memory_size` (pytorch-metric-learning's",
        "CrossBatchMemory around a pair loss: each batch is also scored against this many past",
        "embeddings, and the miner mines among them). `num_classes`, `embedding_size` and `class_counts`",
        "are filled in from the data and the model. The top-level `miner` feeds every loss without a",
        "miner of its own. An argument the class does not take is an error that names it.",
        "",
        "## augmentation blocks",
        "",
        "`data.augment` is a list of blocks `{name: CLASS, <keyword arguments of CLASS>}` with",
        "torchvision.transforms.v2 class and argument names, applied in order to each training image",
        "(uint8, before the model normalises it): `{name: RandomResizedCrop, scale: [0.6, 1.0]}`,",
        "`{name: RandomRotation, degrees: 15}`, `{name: ColorJitter, brightness: 0.2}`, `RandomErasing`,",
        "`RandAugment`, `TrivialAugmentWide`, ... A `size` left out is the training image size. An unknown",
        "name or argument is an error, when the config is read, that suggests the nearest; Normalize and",
        "dtype conversions are refused (the model does both). Image files are augmented in the loader's",
        "workers, in-memory sets where their batches are indexed; every batch has a seed of its own, so a",
        "resumed run augments as the uninterrupted one would have.",
        "",
    ]
    return "\n".join(lines)
