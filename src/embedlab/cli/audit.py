"""`embedlab audit`: duplicates, leaks, likely label errors and identities that may be one, in a
folder or CSV, before its score is trusted (docs/audit.md)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from embedlab.cli.errors import USER_ERRORS, console, fail
from embedlab.cli.options import DeviceOption, SetOption
from embedlab.cli.tables import print_table


class SearchChoice(StrEnum):
    auto = "auto"
    exact = "exact"
    hnsw = "hnsw"
    ivf = "ivf"


def audit(
    data: Annotated[Path, typer.Argument(help="A folder of identities (ROOT/<label>/<image>) or a CSV.")],
    out: Annotated[Path, typer.Option(help="Folder for audit.html, audit.json and one CSV per finding.")],
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Embed with this run's best model and read DATA with its data settings."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Take the data settings (split, roles, root) and, without --run, the model from a config."
        ),
    ] = None,
    set_: SetOption = None,
    image_size: Annotated[
        int | None,
        typer.Option(min=8, help="Side in pixels the images embed at without --run (default 224)."),
    ] = None,
    near_threshold: Annotated[
        float | None,
        typer.Option(
            help="Near-duplicate similarity (default: derived from re-encoded copies of DATA's images)."
        ),
    ] = None,
    search: Annotated[
        SearchChoice,
        typer.Option(help="Neighbour search: auto (exact, HNSW above 200,000 images), exact, hnsw, ivf."),
    ] = SearchChoice.auto,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 128,
    num_workers: Annotated[
        int | None, typer.Option(min=0, help="Loader processes (default: per core).")
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Audit DATA: exact and near duplicates (within an identity, across identities, across splits), likely
    label errors, identities that may be one, unreadable images, and the validation metrics without the
    leaking and conflicting items. Without --run, a pretrained backbone's pooled features embed (resnet50, or
    the config's model)."""
    from embedlab.config import ConfigError, load_config

    try:
        cfg = None
        if config is not None:
            cfg, _ = load_config(config, set_ or [])
        elif set_:
            raise ConfigError("--set changes a config: give --config too")
    except ConfigError as error:
        raise fail(str(error)) from None

    from embedlab.pipelines.audit import AuditOptions, audit_dataset

    options = AuditOptions(
        near_threshold=near_threshold,
        search=search.value,  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
    )
    try:
        result = audit_dataset(
            data, out, run_dir=run, config=cfg, image_size=image_size, options=options, progress=True
        )
    except USER_ERRORS as error:
        raise fail(str(error)) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for line in result.lines():
        console.print(line, highlight=False)
    if result.metrics:
        from rich.table import Table

        names = list(result.metrics[0][2])
        table = Table(title="validation metrics, with and without the findings")
        table.add_column("scored")
        table.add_column("queries", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        for label, queries, values in result.metrics:
            table.add_row(label, str(queries), *(f"{values[n]:.4f}" for n in names))
        print_table(table)
