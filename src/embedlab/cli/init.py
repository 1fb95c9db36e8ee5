"""`embedlab init`: copy a packaged starter config into the current folder, to edit and train."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from embedlab.cli.errors import console, fail
from embedlab.config import packaged_configs


class Starter(StrEnum):
    folder = "folder"
    csv = "csv"
    photos = "photos"
    recipe = "recipe"


#: Each starter and the packaged config it copies.
STARTERS = {
    Starter.folder: "image_folder.yaml",
    Starter.csv: "image_csv.yaml",
    Starter.photos: "photos.yaml",
    Starter.recipe: "fashion_mnist_recipe.yaml",
}


def init(
    name: Annotated[
        Starter,
        typer.Argument(
            help="folder: a folder of photos, one sub-folder per identity; csv: a CSV of paths and "
            "labels; photos: the photo recipe (an ImageNet backbone fine-tuned, set its data and "
            "weights); recipe: the Fashion-MNIST recipe (no data to bring)."
        ),
    ] = Starter.folder,
    out: Annotated[Path | None, typer.Option(help="The file to write (default: ./NAME.yaml).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter config into the current folder: `embedlab init csv` writes ./csv.yaml."""
    target = out or Path(f"{name.value}.yaml")
    if target.exists() and not force:
        raise fail(f"{target} already exists; pass --force to overwrite it")
    source = packaged_configs()[STARTERS[name]]
    target.write_text(source.read_text())
    console.print(f"wrote {target} (from the packaged {source.name}); edit data.dataset, then:")
    console.print(f"  embedlab train {target} --out runs/{target.stem}", highlight=False)
