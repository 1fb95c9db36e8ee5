"""Options shared by several commands: config overrides, checkpoints, batch sizes, index kinds."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")
]
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
