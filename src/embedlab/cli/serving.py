"""The deployment commands: search an index, calibrate its open-set threshold, serve it, export ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from embedlab.cli.errors import USER_ERRORS, console, fail
from embedlab.cli.options import BatchOption, CheckpointChoice, DeviceOption, ExportFormat, RunOption


def search(
    index_dir: Annotated[Path, typer.Argument(help="An index folder.")],
    images: Annotated[list[Path], typer.Argument(help="Query image files.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Results per query.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per query image and line.")
    ] = False,
    run: RunOption = None,
    device: DeviceOption = "auto",
) -> None:
    """The k most similar gallery images of each query, and whether it is a new identity."""
    from embedlab.index.search import open_searcher

    try:
        searcher = open_searcher(index_dir, run, device)
        results = searcher.search_files(images, k)
    except USER_ERRORS as error:
        raise fail(str(error)) from None
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
        raise fail(str(error)) from None
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
    decode_budget_megapixels: Annotated[
        float,
        typer.Option(
            help="Pixels all uploads being decoded at once may declare, megapixels; an upload beyond it "
            "gets 429. At least --max-megapixels."
        ),
    ] = 128.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another name the server answers to in the Host header (NAME or NAME:PORT; repeatable), "
            "e.g. behind a reverse proxy."
        ),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A web page origin allowed to call the API (scheme://host[:port]; repeatable); other "
            "origins get 403."
        ),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Serve the index over HTTP: POST /search, GET /items/{id}/image, GET /healthz, and a page at /."""
    from embedlab.serving.app import ServerLimits
    from embedlab.serving.app import serve as run_server

    try:
        limits = ServerLimits(
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=int(max_megapixels * 1_000_000),
            max_k=max_k,
            default_k=min(10, max_k),
            decode_budget_pixels=int(decode_budget_megapixels * 1_000_000),
        )
        run_server(
            index_dir,
            host=host,
            port=port,
            run_dir=run,
            limits=limits,
            allow_hosts=tuple(allow_host or ()),
            allow_origins=tuple(allow_origin or ()),
            device=device,
        )
    except USER_ERRORS as error:
        raise fail(str(error)) from None


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
        raise fail(str(error)) from None
    size, channels = report.image_size, report.channels
    console.print(
        f"wrote {report.path}: uint8 images (batch, {channels}, {size}, {size}) -> float32 embeddings "
        f"(batch, {report.embedding_dim}), opset {report.opset}\n"
        f"max abs difference onnxruntime vs torch: {report.max_abs_diff:.3g} "
        f"(tolerance {DEFAULT_TOLERANCE:g})",
        highlight=False,
    )
