"""`embedlab evaluate`: the metrics of a run or of .npy embeddings or shards, with post-processing rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from embedlab.cli.errors import console, fail
from embedlab.cli.tables import print_metrics, print_table

if TYPE_CHECKING:
    from embedlab.evaluation import RetrievalResult
    from embedlab.evaluation.steps import StepResult
    from embedlab.retrieval.postprocessing import StepConfig


def evaluate(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A run folder to evaluate on its validation split.")
    ] = None,
    query_embeddings: Annotated[Path | None, typer.Option(help="Query embeddings (N, D) .npy.")] = None,
    query_labels: Annotated[Path | None, typer.Option(help="Query labels (N,) .npy.")] = None,
    gallery_embeddings: Annotated[Path | None, typer.Option(help="Gallery embeddings (M, D) .npy.")] = None,
    gallery_labels: Annotated[Path | None, typer.Option(help="Gallery labels (M,) .npy.")] = None,
    groups: Annotated[
        Path | None,
        typer.Option(help="Ignore groups .npy: (Nq,) without a gallery, else (Nq+Ng,) queries first."),
    ] = None,
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metric names.")] = None,
    query_shards: Annotated[
        Path | None, typer.Option(help="Query embeddings as shards of `embedlab embed`, read one at a time.")
    ] = None,
    gallery_shards: Annotated[
        Path | None, typer.Option(help="Gallery shards (default: the queries searched in themselves).")
    ] = None,
    ensemble: Annotated[
        list[str] | None,
        typer.Option(help="Another run to ensemble with RUN_DIR: RUN_DIR[:WEIGHT] (repeatable)."),
    ] = None,
    tta: Annotated[
        list[str] | None, typer.Option(help="Test-time augmentation: flip, scales:S1,S2,... (repeatable).")
    ] = None,
    whiten: Annotated[int | None, typer.Option(help="PCA whitening to DIM dimensions.")] = None,
    whiten_on: Annotated[str, typer.Option(help="Learn the whitening on: gallery or train.")] = "gallery",
    dba: Annotated[str | None, typer.Option(help="Database-side augmentation: K,ALPHA.")] = None,
    qe: Annotated[str | None, typer.Option(help="alpha-query expansion: K,ALPHA.")] = None,
    rerank: Annotated[str | None, typer.Option(help="k-reciprocal re-ranking: K1,K2,LAMBDA.")] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where exact evaluation computes: auto (a GPU if torch sees one), cpu, cuda or cuda:N."
        ),
    ] = "auto",
    exclude_audit: Annotated[
        Path | None,
        typer.Option(
            help="Hold out the items an `embedlab audit` CSV marks held_out (leaks.csv, label_conflicts.csv)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list of rows with steps).")] = False,
) -> None:
    """Retrieval metrics of a trained run, or of embeddings made anywhere (.npy files).

    With --ensemble, --tta, --whiten, --dba, --qe or --rerank, one row per step, each adding its step to
    the rows above it (in this order), so the table shows what each step added and what it cost.
    --device picks the engine: the same metrics, ties and values on a GPU as on the CPU.
    """
    # .npy files and shards are scored without torch or Lightning: only a RUN_DIR imports them.
    from embedlab.evaluation import evaluate_embedding_files, evaluate_shards
    from embedlab.evaluation.shards import SHARD_METRICS
    from embedlab.retrieval.postprocessing import steps_from_options

    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    try:
        if exclude_audit is not None and run_dir is None:
            raise ValueError("--exclude-audit names images of a run's data: give RUN_DIR")
        if query_shards is not None or gallery_shards is not None:
            if query_shards is None or run_dir is not None or query_embeddings is not None:
                raise ValueError(
                    "--gallery-shards needs --query-shards, which takes no RUN_DIR or .npy files"
                )
            if ensemble or tta or whiten or dba or qe or rerank or groups:
                raise ValueError("shards are evaluated as they are: no retrieval steps or --groups")
            if device not in ("auto", "cpu"):
                raise ValueError(
                    f"shards are evaluated on the CPU; --device {device} needs .npy files or a RUN_DIR"
                )
            result = evaluate_shards(query_shards, gallery_shards, metrics=metric_names or SHARD_METRICS)
            _print_result(result, as_json)
            return
        if run_dir is not None and query_embeddings is not None:
            raise ValueError("give either RUN_DIR or --query-embeddings, not both")
        if run_dir is None and (query_embeddings is None or query_labels is None):
            raise ValueError("give RUN_DIR, or --query-embeddings with --query-labels")
        steps = steps_from_options(whiten=whiten, whiten_on=whiten_on, dba=dba, qe=qe, rerank=rerank)
        if ensemble or tta or steps:
            rows = _evaluate_steps(
                run_dir,
                (query_embeddings, query_labels, gallery_embeddings, gallery_labels, groups),
                metric_names,
                ensemble or [],
                tta or [],
                steps,
                device,
                exclude_audit,
            )
        elif run_dir is not None:
            from embedlab.pipelines.evaluate import evaluate_run

            result = evaluate_run(run_dir, metric_names, device=device, exclude_audit=exclude_audit)
        else:
            assert query_embeddings is not None and query_labels is not None
            result = evaluate_embedding_files(
                query_embeddings,
                query_labels,
                gallery_embeddings,
                gallery_labels,
                groups,
                metric_names,
                device=device,
            )
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    if ensemble or tta or steps:
        if as_json:
            typer.echo(json.dumps([row.to_dict() for row in rows]))
        else:
            _print_step_rows(rows)
    else:
        _print_result(result, as_json)


def _print_result(result: RetrievalResult, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    print_metrics(result.metrics, "retrieval metrics")
    console.print(
        f"{result.n_queries} queries, {result.n_queries_without_positives} without positives "
        "(excluded from the averages)"
    )


def _evaluate_steps(
    run_dir: Path | None,
    files: tuple[Path | None, ...],
    metric_names: list[str] | None,
    ensemble: list[str],
    tta: list[str],
    steps: list[StepConfig],
    device: str,
    exclude_audit: Path | None,
) -> list[StepResult]:
    from embedlab.evaluation import DEFAULT_METRICS, load_embedding_files
    from embedlab.evaluation.steps import RetrievalProblem, postprocessing_rows, score_step

    if run_dir is not None:
        from embedlab.embeddings.encoder import EnsembleMember
        from embedlab.models.tta import TestTimeAugmentation
        from embedlab.pipelines.evaluate import evaluate_run_steps

        return evaluate_run_steps(
            run_dir,
            metric_names,
            ensemble=[EnsembleMember.parse(member) for member in ensemble],
            tta=TestTimeAugmentation.parse(tta) if tta else None,
            steps=steps,
            device=device,
            exclude_audit=exclude_audit,
        )
    if ensemble or tta:
        raise ValueError("--ensemble and --tta embed images with trained models: give a RUN_DIR")
    problem = RetrievalProblem.from_files(load_embedding_files(*files))  # type: ignore[arg-type]
    names = metric_names or list(DEFAULT_METRICS)
    return [
        score_step("embeddings", problem, names, 0.0, device=device),
        *postprocessing_rows(problem, steps, names, device=device),
    ]


def _print_step_rows(rows: list[StepResult]) -> None:
    from rich.table import Table

    names = list(rows[0].result.metrics)
    table = Table(title="retrieval metrics, each row adding its step to those above")
    table.add_column("step")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("step s", justify="right")
    table.add_column("scoring s", justify="right")
    for index, row in enumerate(rows):
        cells = [f"{row.result.metrics[name]:.4f}" for name in names]
        label = row.step if index == 0 else f"+ {row.step}"
        table.add_row(label, *cells, f"{row.step_seconds:.1f}", f"{row.scoring_seconds:.1f}")
    print_table(table)
    first = rows[0].result
    console.print(
        f"{first.n_queries} queries, {first.n_queries_without_positives} without positives "
        "(excluded from the averages)"
    )
