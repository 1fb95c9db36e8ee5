"""The serving commands of `embedlab`: index build / add, search, calibrate, serve, export.

Each command parses its arguments and calls a pipeline of `embedlab.serving`; `embedlab.cli` registers
them. Errors exit with status 2 and a message naming the file, key or shape at fault.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from embedlab.config import ConfigError

if TYPE_CHECKING:
    from embedlab.serving.index import IndexManifest

console = Console()

index_app = typer.Typer(no_args_is_help=True, help="Build a gallery index from a trained run, or add to one.")

#: The failures a user can fix (bad paths, mismatched model and index, unreadable images, ...).
USER_ERRORS = (ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError)


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


RunOption = Annotated[
    Path | None,
    typer.Option("--run", help="The run whose model embeds (default: the run that built the index)."),
]
BatchOption = Annotated[int | None, typer.Option(help="Images per forward pass (default: the run's).")]


def _fail(message: str) -> typer.Exit:
    # embedlab.cli imports this module at its end to register the commands, so import it late.
    from embedlab import cli

    return cli._fail(message)


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
) -> None:
    """Embed a gallery with a trained run, or read the shards of `embedlab embed`, and write a
    searchable index (atomically)."""
    from embedlab.embeddings.encoder import EnsembleMember
    from embedlab.models.tta import TestTimeAugmentation
    from embedlab.retrieval.postprocessing import steps_from_options
    from embedlab.serving.build import IndexSteps, build_gallery_index
    from embedlab.serving.large import FaissSettings, build_index_from_shards

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
            raise _fail(str(error)) from None
        _report_index(out, manifest, identities=None)
        return
    if run_dir is None or not gallery:
        raise _fail("give RUN_DIR and --gallery, or --embeddings")
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
        )
    except USER_ERRORS as error:
        raise _fail(str(error)) from None
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
) -> None:
    """Embed more images with the index's model and append them to the index."""
    from embedlab.serving.build import add_to_gallery_index

    try:
        result = add_to_gallery_index(index_dir, images, run_dir=run, label=label, batch_size=batch_size)
    except USER_ERRORS as error:
        raise _fail(str(error)) from None
    skipped = f" (skipped {result.skipped} already indexed)" if result.skipped else ""
    message = f"added {result.added} images{skipped}; {index_dir} holds {len(result.index)}"
    console.print(message, highlight=False)


def search(
    index_dir: Annotated[Path, typer.Argument(help="An index folder.")],
    images: Annotated[list[Path], typer.Argument(help="Query image files.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Results per query.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per query image and line.")
    ] = False,
    run: RunOption = None,
) -> None:
    """The k most similar gallery images of each query, and whether it is a new identity."""
    from embedlab.serving.searcher import open_searcher

    try:
        searcher = open_searcher(index_dir, run)
        results = searcher.search_files(images, k)
    except USER_ERRORS as error:
        raise _fail(str(error)) from None
    for path, result in zip(images, results, strict=True):
        if as_json:
            typer.echo(json.dumps({"query": str(path), **result.to_dict()}))
            continue
        if result.new_identity is None:
            verdict = "no open-set threshold calibrated (embedlab calibrate)"
        elif result.new_identity:
            verdict = f"[bold]new identity[/] (best similarity below {searcher.threshold:.4f})"
        else:
            verdict = f"[bold]known identity: {result.hits[0].label}[/]"
        table = Table(title=f"{path}: {verdict}", title_justify="left")
        for column in ("rank", "label", "score", "path"):
            table.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for rank, hit in enumerate(result.hits, start=1):
            table.add_row(str(rank), hit.label, f"{hit.score:.4f}", hit.path)
        console.print(table)


def calibrate(
    index_dir: Annotated[Path, typer.Argument(help="An index folder.")],
    queries: Annotated[
        list[Path] | None,
        typer.Option(
            help="Labelled calibration images: a folder, a CSV or files (default: the run's "
            "validation split)."
        ),
    ] = None,
    target_fmr: Annotated[
        float, typer.Option(help="The false-match rate to stay at or below.", min=0.0, max=1.0)
    ] = 0.01,
    best_f1: Annotated[
        bool, typer.Option("--best-f1", help="Pick the threshold with the best known-vs-new F1 instead.")
    ] = False,
    run: RunOption = None,
    batch_size: BatchOption = None,
) -> None:
    """Pick the similarity threshold below which a query is a new identity; store it in the index."""
    from embedlab.serving.calibrate import calibrate_index

    try:
        point = calibrate_index(
            index_dir,
            queries=queries or None,
            objective="best_f1" if best_f1 else "target_fmr",
            target_fmr=target_fmr,
            run_dir=run,
            batch_size=batch_size,
        )
    except USER_ERRORS as error:
        raise _fail(str(error)) from None
    goal = "best known-vs-new F1" if best_f1 else f"false-match rate <= {target_fmr:g}"
    table = Table(title=f"open-set operating point ({goal})", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("threshold (cosine similarity)", f"{point.threshold:.6f}")
    table.add_row("false-match rate", f"{point.false_match_rate:.4f}")
    table.add_row("true-match rate", f"{point.true_match_rate:.4f}")
    table.add_row("precision / recall / F1", f"{point.precision:.4f} / {point.recall:.4f} / {point.f1:.4f}")
    table.add_row("mated / non-mated searches", f"{point.n_mated} / {point.n_non_mated}")
    console.print(table)
    stored = f"stored in {index_dir}/manifest.json; search answers 'new identity' below the threshold"
    console.print(stored, highlight=False)


def serve(
    index_dir: Annotated[Path, typer.Argument(help="An index folder.")],
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    run: RunOption = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 20.0,
    max_megapixels: Annotated[float, typer.Option(help="Largest image decoded, megapixels.")] = 64.0,
    max_k: Annotated[int, typer.Option(help="Most results one request may ask for.")] = 100,
) -> None:
    """Serve the index over HTTP: POST /search, GET /items/{id}/image, GET /healthz, and a page at /."""
    from embedlab.serving.app import ServerLimits
    from embedlab.serving.app import serve as run_server

    limits = ServerLimits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=int(max_megapixels * 1_000_000),
        max_k=max_k,
        default_k=min(10, max_k),
    )
    try:
        run_server(index_dir, host=host, port=port, run_dir=run, limits=limits)
    except USER_ERRORS as error:
        raise _fail(str(error)) from None


def export(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder.")],
    format_: Annotated[ExportFormat, typer.Option("--format", help="The export format.")] = ExportFormat.onnx,
    out: Annotated[Path | None, typer.Option(help="Output file (default: RUN_DIR/model.onnx).")] = None,
    checkpoint: Annotated[CheckpointChoice, typer.Option(help="Which checkpoint of the run.")] = (
        CheckpointChoice.best
    ),
) -> None:
    """Export the embedder with its preprocessing to ONNX, checked against torch by onnxruntime."""
    from embedlab.serving.export import DEFAULT_TOLERANCE, export_onnx

    try:
        report = export_onnx(run_dir, out, checkpoint=checkpoint.value)
    except USER_ERRORS as error:
        raise _fail(str(error)) from None
    size, channels = report.image_size, report.channels
    console.print(
        f"wrote {report.path}: uint8 images (batch, {channels}, {size}, {size}) -> float32 embeddings "
        f"(batch, {report.embedding_dim}), opset {report.opset}\n"
        f"max abs difference onnxruntime vs torch: {report.max_abs_diff:.3g} "
        f"(tolerance {DEFAULT_TOLERANCE:g})",
        highlight=False,
    )
