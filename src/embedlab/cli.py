"""The `embedlab` command: parses arguments and calls the pipelines; no logic of its own."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.markup import escape

from embedlab.config import ConfigError, load_config, parse_grid_option, read_yaml
from embedlab.serving.cli_commands import BatchOption, CheckpointChoice

if TYPE_CHECKING:
    from embedlab.evaluation import RetrievalResult
    from embedlab.evaluation.steps import StepResult
    from embedlab.reporting.embedding_map import MapMethod
    from embedlab.retrieval.postprocessing import StepConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, compare, evaluate and serve embedding models for image retrieval.",
)
console = Console()

DEMO_CONFIG = "fashion_mnist_losses.yaml"

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")
]


def _fail(message: str) -> typer.Exit:
    # Escaped: a message quoting a path or an error with [brackets] is text, not markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=2)


def packaged_config(name: str) -> Path:
    return Path(str(resources.files("embedlab") / "configs" / name))


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="The experiment config (YAML).")],
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run folder.")] = False,
    devices: Annotated[
        int | None,
        typer.Option(min=1, help="Training processes on this machine (DDP); default: torchrun's, else 1."),
    ] = None,
    num_nodes: Annotated[
        int | None, typer.Option(min=1, help="Machines, each running --devices processes (torchrun).")
    ] = None,
) -> None:
    """Train one model and write its run folder (checkpoints, metrics.csv, summary.json, curves.png)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from embedlab.reporting.curves import write_run_curves
    from embedlab.training.fit import fit
    from embedlab.training.module import NonFiniteLossError, NonFiniteWeightsError

    try:
        cfg, _ = load_config(config, set_ or [])
        result = fit(
            cfg,
            out or Path("runs") / config.stem,
            resume=resume,
            force=force,
            devices=devices,
            num_nodes=num_nodes,
        )
    except (
        ConfigError,
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        NonFiniteLossError,
        NonFiniteWeightsError,
    ) as error:
        # Under DDP every process stops with the same error; one of them says so.
        raise (_fail(str(error)) if rank_zero_only.rank == 0 else typer.Exit(code=2)) from None
    if not result.main_process:
        return
    _print_metrics(result.metrics, f"{result.run_dir}: final validation metrics")
    console.print(
        f"trained in {result.summary['train_seconds']:.1f} s "
        f"({result.summary['images_per_second']:.0f} images/s); run folder: {result.run_dir}"
    )
    console.print(f"curves: {write_run_curves(result.run_dir)}")


@app.command()
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a list of rows with steps).")] = False,
) -> None:
    """Retrieval metrics of a trained run, or of embeddings made anywhere (.npy files).

    With --ensemble, --tta, --whiten, --dba, --qe or --rerank, one row per step, each adding its step to
    the rows above it (in this order), so the table shows what each step added and what it cost.
    """
    from embedlab.evaluation import evaluate_embedding_files, evaluate_shards
    from embedlab.evaluation.shards import SHARD_METRICS
    from embedlab.retrieval.postprocessing import steps_from_options
    from embedlab.training.evaluate import evaluate_run

    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    try:
        if query_shards is not None or gallery_shards is not None:
            if query_shards is None or run_dir is not None or query_embeddings is not None:
                raise ValueError(
                    "--gallery-shards needs --query-shards, which takes no RUN_DIR or .npy files"
                )
            if ensemble or tta or whiten or dba or qe or rerank or groups:
                raise ValueError("shards are evaluated as they are: no retrieval steps or --groups")
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
            )
        elif run_dir is not None:
            result = evaluate_run(run_dir, metric_names)
        else:
            assert query_embeddings is not None and query_labels is not None
            result = evaluate_embedding_files(
                query_embeddings, query_labels, gallery_embeddings, gallery_labels, groups, metric_names
            )
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
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
    _print_metrics(result.metrics, "retrieval metrics")
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
) -> list[StepResult]:
    from embedlab.embeddings.encoder import EnsembleMember
    from embedlab.evaluation import DEFAULT_METRICS, load_embedding_files
    from embedlab.evaluation.steps import RetrievalProblem, postprocessing_rows, score_step
    from embedlab.models.tta import TestTimeAugmentation
    from embedlab.training.evaluate import evaluate_run_steps

    if run_dir is not None:
        return evaluate_run_steps(
            run_dir,
            metric_names,
            ensemble=[EnsembleMember.parse(member) for member in ensemble],
            tta=TestTimeAugmentation.parse(tta) if tta else None,
            steps=steps,
        )
    if ensemble or tta:
        raise ValueError("--ensemble and --tta embed images with trained models: give a RUN_DIR")
    problem = RetrievalProblem.from_files(load_embedding_files(*files))  # type: ignore[arg-type]
    names = metric_names or list(DEFAULT_METRICS)
    return [score_step("embeddings", problem, names, 0.0), *postprocessing_rows(problem, steps, names)]


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
    console.print(table)
    first = rows[0].result
    console.print(
        f"{first.n_queries} queries, {first.n_queries_without_positives} without positives "
        "(excluded from the averages)"
    )


@app.command()
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
) -> None:
    """Embed a large image collection into shard files (embeddings and ids), on one or more processes."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from embedlab.embeddings.pipeline import embed_to_shards

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
        )
    except (ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        raise (_fail(str(error)) if rank_zero_only.rank == 0 else typer.Exit(code=2)) from None
    if result.shards is None:
        return
    manifest = result.shards.manifest
    console.print(
        f"{out}: {manifest.n_items} images, {manifest.n_shards} shard(s) of up to {manifest.shard_size} "
        f"({manifest.embedding_dim}-d, checkpoint sha256 {manifest.model['checkpoint_sha256'][:12]}); "
        f"{result.embedded_shards} shard(s) embedded by this run",
        highlight=False,
    )


@app.command()
def compare(
    config: Annotated[
        Path, typer.Argument(help="The experiment config (YAML); its `grid` lists what to compare.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the runs and the leaderboard.")],
    grid: Annotated[list[str] | None, typer.Option(help="Another axis: KEY=V1,V2,... (repeatable).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per combination: train.seed, train.seed + 1, ...")] = 1,
    set_: SetOption = None,
) -> None:
    """Train every combination over several seeds and write leaderboard.csv and leaderboard.md."""
    try:
        _, raw = load_config(config, set_ or [])
        axes = [parse_grid_option(option) for option in grid or []]
    except ConfigError as error:
        raise _fail(str(error)) from None
    _run_comparison(raw, out, axes, seeds)


def _run_comparison(raw: dict, out: Path, axes: list, seeds: int) -> None:
    from embedlab.reporting.leaderboard import leaderboard_table
    from embedlab.reporting.report import build_report
    from embedlab.training.compare import compare as run_compare

    def announce(label: str, seed: int, run_dir: Path) -> None:
        console.rule(f"{label} · seed {seed}")

    try:
        comparison = run_compare(raw, out, grid=axes, seeds=seeds, on_run=announce)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    console.print(leaderboard_table(comparison.rows, comparison.metrics))
    console.print(f"leaderboard: {comparison.markdown_path} and {comparison.csv_path}")
    console.print(f"report: {build_report(out)}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the runs and the leaderboard.")] = Path("demo-output"),
    seeds: Annotated[int, typer.Option(help="Seeds per loss.")] = 1,
) -> None:
    """The founding comparison: one model, five metric losses (the last the recipe's), on Fashion-MNIST."""
    raw = read_yaml(packaged_config(DEMO_CONFIG))
    _run_comparison(raw, out, [], seeds)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A comparison folder (compare, demo) or a run folder.")],
    map_method: Annotated[
        str, typer.Option(help="Embedding map: auto (UMAP if installed, else t-SNE), umap, tsne or pca.")
    ] = "auto",
) -> None:
    """(Re)build FOLDER/report.html: leaderboard, paired tests over seeds, curves, retrieval grids, maps."""
    from embedlab.reporting.report import ReportOptions, build_report

    try:
        # build_report checks the method name and lists the valid ones.
        path = build_report(folder, ReportOptions(map_method=cast("MapMethod", map_method)))
    except (ConfigError, ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    console.print(f"report: {path}")


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)


# The serving commands (issue 7) live in their own module; registered here so that `embedlab` lists them.
from embedlab.serving.cli_commands import calibrate, export, index_app, search, serve  # noqa: E402

app.add_typer(index_app, name="index")
for _command in (search, calibrate, serve, export):
    app.command()(_command)
