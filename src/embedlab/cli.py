"""The `embedlab` command: parses arguments and calls the pipelines; no logic of its own."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console

from embedlab.config import ConfigError, load_config, parse_grid_option, read_yaml

if TYPE_CHECKING:
    from embedlab.reporting.embedding_map import MapMethod

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
    console.print(f"[bold red]error:[/] {message}", highlight=False)
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
) -> None:
    """Train one model and write its run folder (checkpoints, metrics.csv, summary.json, curves.png)."""
    from embedlab.reporting.curves import write_run_curves
    from embedlab.training.fit import fit

    try:
        cfg, _ = load_config(config, set_ or [])
        result = fit(cfg, out or Path("runs") / config.stem, resume=resume, force=force)
    except (ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        raise _fail(str(error)) from None
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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Retrieval metrics of a trained run, or of embeddings made anywhere (.npy files)."""
    from embedlab.evaluation import evaluate_embedding_files
    from embedlab.training.evaluate import evaluate_run

    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    try:
        if run_dir is not None:
            if query_embeddings is not None:
                raise ValueError("give either RUN_DIR or --query-embeddings, not both")
            result = evaluate_run(run_dir, metric_names)
        elif query_embeddings is not None and query_labels is not None:
            result = evaluate_embedding_files(
                query_embeddings, query_labels, gallery_embeddings, gallery_labels, groups, metric_names
            )
        else:
            raise ValueError("give RUN_DIR, or --query-embeddings with --query-labels")
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _print_metrics(result.metrics, "retrieval metrics")
        console.print(
            f"{result.n_queries} queries, {result.n_queries_without_positives} without positives "
            "(excluded from the averages)"
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
    """The founding comparison: one model, four metric losses, on Fashion-MNIST."""
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
