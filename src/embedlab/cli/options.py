"""Options shared by several commands: config overrides, checkpoints, batch sizes, devices, index kinds."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from embedlab.config import ConfigError

ConfigArgument = Annotated[
    Path,
    typer.Argument(
        help="The experiment config (YAML): a file, or a packaged config named alone "
        "(image_folder.yaml, fashion_mnist_recipe.yaml, ...); `embedlab init` writes a starter."
    ),
]
OverridesArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Config overrides KEY=VALUE after the config (model.backbone=resnet50 train.epochs=5), "
        "the same as --set.",
        show_default=False,
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(
        help="Where the model embeds: auto (the GPU when torch sees one, else the CPU), cpu, cuda or cuda:N."
    ),
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")
]


def config_overrides(overrides: list[str] | None, set_: list[str] | None) -> list[str]:
    """The bare KEY=VALUE arguments after the config, then the --set ones, applied in that order."""
    for token in overrides or []:
        if "=" not in token:
            raise ConfigError(
                f"unexpected argument {token!r} after the config: overrides are KEY=VALUE "
                "(e.g. model.backbone=resnet50, or --set KEY=VALUE)"
            )
    return [*(overrides or []), *(set_ or [])]


RunOption = Annotated[
    Path | None,
    typer.Option("--run", help="The run whose model embeds (default: the run that built the index)."),
]
BatchOption = Annotated[int | None, typer.Option(help="Images per forward pass (default: the run's).")]


class KindChoice(StrEnum):
    auto = "auto"
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class CheckpointChoice(StrEnum):
    best = "best"
    last = "last"


class ExportFormat(StrEnum):
    onnx = "onnx"
