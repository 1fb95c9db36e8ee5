"""`embedlab embed`: a large image collection into shard files, on one or more processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedlab.cli.errors import console, fail_once
from embedlab.cli.options import BatchOption, CheckpointChoice, DeviceOption
from embedlab.config import ConfigError


def embed(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder.")],
    images: Annotated[Path, typer.Option(help="A folder (ROOT/<label>/<image>) or a CSV of images.")],
    out: Annotated[Path, typer.Option(help="The folder of embedding shards to write.")],
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard file.")] = 100_000,
    checkpoint: Annotated[CheckpointChoice, typer.Option(help="Which checkpoint of the run.")] = (
        CheckpointChoice.best
    ),
    batch_size: BatchOption = None,
    devices: Annotated[
        int | None, typer.Option(min=1, help="Processes on this machine (DDP); default: torchrun's, else 1.")
    ] = None,
    num_nodes: Annotated[
        int | None, typer.Option(min=1, help="Machines, each running --devices processes (torchrun).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Finish an interrupted embedding in --out.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing folder of shards.")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Embed a large image collection into shard files (embeddings and ids), on one or more processes."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from embedlab.pipelines.embed import embed_to_shards

    try:
        result = embed_to_shards(
            run_dir,
            images,
            out,
            shard_size=shard_size,
            checkpoint=checkpoint.value,
            batch_size=batch_size,
            devices=devices,
            num_nodes=num_nodes,
            resume=resume,
            force=force,
            device=device,
        )
    except (ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        raise fail_once(str(error), rank_zero_only.rank) from None
    if result.shards is None:
        return
    manifest = result.shards.manifest
    console.print(
        f"{out}: {manifest.n_items} images, {manifest.n_shards} shard(s) of up to {manifest.shard_size} "
        f"({manifest.embedding_dim}-d, checkpoint sha256 {manifest.model['checkpoint_sha256'][:12]}); "
        f"{result.embedded_shards} shard(s) embedded by this run",
        highlight=False,
    )
