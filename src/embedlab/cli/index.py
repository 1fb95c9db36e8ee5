"""`embedlab index build` and `embedlab index add`: write a gallery index, or grow one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from embedlab.cli.errors import USER_ERRORS, console, fail
from embedlab.cli.options import BatchOption, CheckpointChoice, DeviceOption, KindChoice, RunOption

if TYPE_CHECKING:
    from embedlab.index.manifest import IndexManifest

index_app = typer.Typer(no_args_is_help=True, help="Build a gallery index from a trained run, or add to one.")


@index_app.command("build")
def index_build(
    out: Annotated[Path, typer.Option(help="The index folder to write.")],
    run_dir: Annotated[Path | None, typer.Argument(help="A trained run folder (with --gallery).")] = None,
    gallery: Annotated[
        list[Path] | None,
        typer.Option(help="A folder (ROOT/<label>/<image>), a CSV, or image files (repeatable)."),
    ] = None,
    embeddings: Annotated[
        Path | None,
        typer.Option(help="Instead of RUN_DIR and --gallery: the shards `embedlab embed` wrote."),
    ] = None,
    kind: Annotated[
        KindChoice,
        typer.Option(help="faiss index: flat (exact), ivf, hnsw, ivfpq; auto picks by gallery size."),
    ] = KindChoice.auto,
    index_shards: Annotated[
        int, typer.Option(min=1, help="Split the faiss index over this many files, searched as one.")
    ] = 1,
    nlist: Annotated[int | None, typer.Option(min=1, help="ivf, ivfpq: cells (default 4 * sqrt(N)).")] = None,
    nprobe: Annotated[int, typer.Option(min=1, help="ivf, ivfpq: cells visited per query.")] = 16,
    pq_m: Annotated[
        int | None, typer.Option(min=1, help="ivfpq: bytes per row, a divisor of the size (default D/8).")
    ] = None,
    train_size: Annotated[
        int | None, typer.Option(min=1, help="ivf, ivfpq: rows sampled to train (default 40 per cell).")
    ] = None,
    checkpoint: Annotated[CheckpointChoice, typer.Option(help="Which checkpoint of the run.")] = (
        CheckpointChoice.best
    ),
    label: Annotated[
        str | None, typer.Option(help="Label of loose image files (default: their folder's name).")
    ] = None,
    batch_size: BatchOption = None,
    force: Annotated[bool, typer.Option(help="Replace an existing index at --out.")] = False,
    ensemble: Annotated[
        list[str] | None,
        typer.Option(help="Another run whose embeddings join RUN_DIR's: RUN_DIR[:WEIGHT] (repeatable)."),
    ] = None,
    tta: Annotated[
        list[str] | None, typer.Option(help="Test-time augmentation: flip, scales:S1,S2,... (repeatable).")
    ] = None,
    whiten: Annotated[int | None, typer.Option(help="PCA whitening to DIM, learned on the gallery.")] = None,
    dba: Annotated[
        str | None, typer.Option(help="Database-side augmentation of the gallery: K,ALPHA.")
    ] = None,
    qe: Annotated[str | None, typer.Option(help="Query expansion at search time: K,ALPHA.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Embed a gallery with a trained run, or read the shards of `embedlab embed`, and write a
    searchable index (atomically)."""
    from embedlab.embeddings.encoder import EnsembleMember
    from embedlab.index.shards import FaissSettings, build_index_from_shards
    from embedlab.models.tta import TestTimeAugmentation
    from embedlab.pipelines.index import IndexSteps, build_gallery_index
    from embedlab.retrieval.postprocessing import steps_from_options

    settings = FaissSettings(
        nlist=nlist, nprobe=nprobe, pq_m=pq_m, train_size=train_size, shards=index_shards
    )
    if embeddings is not None:
        steps_given = [ensemble, tta, whiten, dba, qe, label, batch_size]
        try:
            if run_dir is not None or gallery or any(value for value in steps_given):
                raise ValueError(
                    "--embeddings brings its own model and images: give it without RUN_DIR, --gallery, "
                    "--ensemble, --tta, --whiten, --dba, --qe, --label and --batch-size"
                )
            manifest = build_index_from_shards(embeddings, out, kind=kind.value, faiss=settings, force=force)
        except USER_ERRORS as error:
            raise fail(str(error)) from None
        _report_index(out, manifest, identities=None)
        return
    if run_dir is None or not gallery:
        raise fail("give RUN_DIR and --gallery, or --embeddings")
    try:
        steps = IndexSteps(
            ensemble=[EnsembleMember.parse(member) for member in ensemble or []],
            tta=TestTimeAugmentation.parse(tta) if tta else None,
            postprocessing=steps_from_options(whiten=whiten, dba=dba, qe=qe),
        )
        index = build_gallery_index(
            run_dir,
            gallery,
            out,
            kind=kind.value,
            checkpoint=checkpoint.value,
            label=label,
            batch_size=batch_size,
            force=force,
            steps=steps,
            faiss=settings,
            device=device,
        )
    except USER_ERRORS as error:
        raise fail(str(error)) from None
    _report_index(out, index.manifest, identities=len({item.label for item in index.items}))


def _report_index(out: Path, manifest: IndexManifest, identities: int | None) -> None:
    record = manifest.faiss
    of_identities = "" if identities is None else f" of {identities} identities"
    split = f" in {record.shards} files" if record.shards > 1 else ""
    console.print(
        f"indexed {manifest.size} images{of_identities} into {out} ({record.kind} index{split}, "
        f"{manifest.vector_dim}-d embeddings, checkpoint sha256 {manifest.model.checkpoint_sha256[:12]})",
        highlight=False,
    )
    if record.recall is not None:
        console.print(
            f"recall@{record.recall.k} against exact search: {record.recall.recall:.4f} "
            f"({record.recall.n_queries} gallery images as queries, nprobe {record.ivf_nprobe})",
            highlight=False,
        )


@index_app.command("add")
def index_add(
    index_dir: Annotated[Path, typer.Argument(help="An index folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or one folder or CSV.")],
    label: Annotated[
        str | None, typer.Option(help="Label of loose image files (default: their folder's name).")
    ] = None,
    run: RunOption = None,
    batch_size: BatchOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Embed more images with the index's model and append them to the index."""
    from embedlab.pipelines.index import add_to_gallery_index

    try:
        result = add_to_gallery_index(
            index_dir, images, run_dir=run, label=label, batch_size=batch_size, device=device
        )
    except USER_ERRORS as error:
        raise fail(str(error)) from None
    skipped = f" (skipped {result.skipped} already indexed)" if result.skipped else ""
    message = f"added {result.added} images{skipped}; {index_dir} holds {len(result.index)}"
    console.print(message, highlight=False)
