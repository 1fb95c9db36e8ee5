"""`embed_to_shards`: a folder or CSV of images -> embeddings in shards (shards.py), on one process or
several (Lightning Fabric's DDP launch: `--devices N` or torchrun, as for training).

Shard k goes to process k mod W. Each process streams the images of its shards that are not on disk
yet through the model, batch by batch, and writes each shard as soon as it is embedded, so a process
holds one shard of embeddings at a time. Process 0 prepares the folder before the others look at it
and writes the manifest once all of them have finished.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric

from embedlab.atomic import remove_stale_temporaries
from embedlab.data.images import ImageFiles
from embedlab.data.sources import read_csv, read_folder
from embedlab.embeddings.shards import (
    SHARD_DIR,
    EmbeddingShards,
    Shard,
    ShardSpec,
    is_complete,
    read_spec,
    shard_is_complete,
    write_items,
    write_manifest,
    write_shard,
    write_spec,
)
from embedlab.index.manifest import CheckpointName
from embedlab.models.devices import resolve_device
from embedlab.models.inference import embed
from embedlab.pipelines.index import new_manifest
from embedlab.training.distributed import resolve_layout
from embedlab.training.run_dir import load_run

DEFAULT_SHARD_SIZE = 100_000


def read_images(source: Path, image_size: int, channels: int) -> tuple[ImageFiles, list[dict[str, Any]]]:
    """Every image of a folder (ROOT/<label>/<image>) or a CSV, and its item record."""
    if source.suffix.lower() == ".csv":
        images = read_csv(source, image_size, channels).images
    elif source.is_dir():
        images = read_folder(source, image_size, channels).images
    else:
        raise FileNotFoundError(f"images {source} is neither a folder nor a .csv file")
    names = images.class_names or []
    extras = images.extra or [{} for _ in images.paths]
    items = [
        {"path": str(path.resolve()), "label": names[code], "extra": extra}
        for path, code, extra in zip(images.paths, images.labels.tolist(), extras, strict=True)
    ]
    return images, items


@dataclass
class EmbedResult:
    """The finished folder (on process 0; None on the others) and how many shards this run embedded."""

    shards: EmbeddingShards | None
    embedded_shards: int
    main_process: bool


def _prepare_folder(out: Path, spec: ShardSpec, resume: bool, force: bool) -> None:
    """Check `out` against the spec, as `fit` checks a run folder; write spec.json when starting."""
    existing = read_spec(out) if out.is_dir() else None
    if existing is not None and resume:
        if existing != spec:
            raise ValueError(
                f"--resume: {out} holds the embeddings of another model, source or shard size "
                f"(spec.json differs); pass --force to start again"
            )
        if is_complete(out):
            raise FileExistsError(f"{out} is already complete; pass --force to embed again")
        # What a process killed mid-shard left beside the shards it did not replace.
        remove_stale_temporaries(out / SHARD_DIR)
        return
    if resume:
        raise FileNotFoundError(f"--resume: {out} holds no unfinished embedding; start without --resume")
    if out.exists() and any(out.iterdir()):
        if not force:
            state = "a finished" if is_complete(out) else "an unfinished" if existing else "a"
            raise FileExistsError(
                f"{out} already holds {state} folder; pass --resume to finish an unfinished one, "
                "--force to overwrite it, or choose another --out"
            )
        if existing is None:
            raise FileExistsError(f"{out} exists and is not an embedding folder; choose another --out")
        shutil.rmtree(out)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    write_spec(out, spec)


def embed_to_shards(
    run_dir: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    checkpoint: CheckpointName = "best",
    batch_size: int | None = None,
    devices: int | None = None,
    num_nodes: int | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str = "auto",
) -> EmbedResult:
    """Embed every image of a folder or CSV with a run's checkpoint into shards of `shard_size` items
    in `out` (see shards.py), on `devices` processes per node (default: torchrun's, else one).

    device: "auto" (the GPUs when torch sees them), "cpu", "cuda" or "cuda:N". On GPUs each process
    embeds on its own GPU (Fabric gives process k of a node GPU k); "cuda:N" picks GPU N for one
    process."""
    out, images = Path(out), Path(images)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    layout = resolve_layout(devices, num_nodes)
    target = resolve_device(device)
    run = load_run(run_dir, checkpoint)
    preprocess = run.embedder.preprocess
    files, items = read_images(images, preprocess.size, preprocess.channels)
    record = new_manifest(run, checkpoint, "flat", len(items))
    spec = ShardSpec(
        model=record.model.model_dump(mode="json"),
        preprocessing=record.preprocessing.model_dump(mode="json"),
        source=str(images.resolve()),
        n_items=len(items),
        shard_size=shard_size,
        embedding_dim=run.embedder.embedding_dim,
        label_names=files.class_names or [],
    )
    done_before = 0
    if layout.rank == 0:
        _prepare_folder(out, spec, resume, force)
        if resume:
            done_before = sum(shard_is_complete(out, spec, k) for k in range(spec.n_shards))
        else:
            write_items(out, items)

    # Fabric announces every process joining at INFO level; the result line says what happened.
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    on_gpu = target.type == "cuda"
    fabric = Fabric(
        accelerator="cuda" if on_gpu else "cpu",
        devices=[target.index]
        if on_gpu and target.index is not None and layout.devices == 1
        else layout.devices,
        num_nodes=layout.num_nodes,
        # DDP only for its launch and barriers: nccl between GPUs, gloo between CPU processes.
        strategy="ddp" if layout.world_size > 1 else "auto",
    )
    fabric.launch()  # with --devices N, starts the other processes (each runs this command again)
    fabric.barrier()  # process 0 has prepared the folder
    pending = [
        k
        for k in range(fabric.global_rank, spec.n_shards, fabric.world_size)
        if not shard_is_complete(out, spec, k)
    ]
    run.embedder.to(fabric.device)
    batch = batch_size or run.config.train.eval_batch_size
    show = progress and fabric.is_global_zero
    for shard in pending:
        ids = spec.ids_of(shard)
        rows = files.subset(torch.arange(ids.start, ids.stop))
        embeddings = embed(
            run.embedder,
            rows,
            batch,
            run.config.data.num_workers,
            progress=show,
            precision=run.config.train.precision,
        )
        write_shard(out, shard, Shard(np.arange(ids.start, ids.stop), rows.labels.numpy(), embeddings))
    fabric.barrier()  # every process has written its shards
    if fabric.global_rank != 0:
        return EmbedResult(shards=None, embedded_shards=len(pending), main_process=False)
    write_manifest(out, spec)
    return EmbedResult(EmbeddingShards(out), spec.n_shards - done_before, main_process=True)
