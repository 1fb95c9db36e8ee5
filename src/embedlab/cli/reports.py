"""`embedlab report`: the HTML report of a comparison or run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from embedlab.cli.errors import console, fail
from embedlab.config import ConfigError

if TYPE_CHECKING:
    from embedlab.reporting.embedding_map import MapMethod


def report(
    folder: Annotated[Path, typer.Argument(help="A comparison folder (compare, demo) or a run folder.")],
    map_method: Annotated[
        str, typer.Option(help="Embedding map: auto (UMAP if installed, else t-SNE), umap, tsne or pca.")
    ] = "auto",
    grids: Annotated[
        bool,
        typer.Option(
            "--grids/--no-grids",
            help="Draw retrieval grids (reads the runs' images, so imports torch); --no-grids needs neither "
            "torch nor Lightning.",
        ),
    ] = True,
) -> None:
    """(Re)build FOLDER/report.html: leaderboard, paired tests over seeds, curves, retrieval grids, maps."""
    from embedlab.reporting.report import ReportOptions, build_report

    try:
        # build_report checks the method name and lists the valid ones.
        path = build_report(folder, ReportOptions(map_method=cast("MapMethod", map_method), grids=grids))
    except (ConfigError, ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    console.print(f"report: {path}")
