"""The training commands: train one run, compare a grid over seeds, and the demo comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from embedlab.cli.errors import console, fail, fail_once, launch_rank
from embedlab.cli.options import ConfigArgument, OverridesArgument, SetOption, config_overrides
from embedlab.cli.tables import print_metrics, print_table
from embedlab.config import (
    ConfigError,
    expand_grid,
    load_config,
    packaged_configs,
    parse_config,
    parse_grid_option,
    read_yaml,
)

DEMO_CONFIG = "fashion_mnist_losses.yaml"


def train(
    config: ConfigArgument,
    overrides: OverridesArgument = None,
    set_: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run folder.")] = False,
    devices: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Training processes on this machine (DDP); default: train.devices, torchrun's, else 1.",
        ),
    ] = None,
    num_nodes: Annotated[
        int | None, typer.Option(min=1, help="Machines, each running --devices processes (torchrun).")
    ] = None,
) -> None:
    """Train one model and write its run folder (checkpoints, metrics.csv, summary.json, curves.png)."""
    # The config is read before torch and Lightning are imported, so a typo is reported at once.
    try:
        cfg, _ = load_config(config, config_overrides(overrides, set_))
    except ConfigError as error:
        raise fail_once(str(error), launch_rank()) from None
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from embedlab.reporting.curves import write_run_curves
    from embedlab.training.fit import fit
    from embedlab.training.module import NonFiniteLossError, NonFiniteWeightsError

    try:
        result = fit(
            cfg,
            out or Path("runs") / config.stem,
            resume=resume,
            force=force,
            devices=devices,
            num_nodes=num_nodes,
        )
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        NonFiniteLossError,
        NonFiniteWeightsError,
    ) as error:
        raise fail_once(str(error), rank_zero_only.rank) from None
    if not result.main_process:
        return
    skipped = result.summary.get("skipped_unreadable", 0)
    if skipped:
        named = ", ".join(f["path"] for f in result.summary["skipped_unreadable_files"][:5])
        console.print(
            f"left out {skipped} unreadable image file(s) (data.skip_unreadable): {escape(named)}"
            f"{', ...' if skipped > 5 else ''}; see summary.json",
            highlight=False,
        )
    print_metrics(
        result.metrics,
        f"{result.run_dir}: final validation metrics",
        zero_shot=result.summary.get("zero_shot_metrics"),
    )
    console.print(
        f"trained in {result.summary['train_seconds']:.1f} s "
        f"({result.summary['images_per_second']:.0f} images/s); run folder: {result.run_dir}"
    )
    console.print(f"curves: {write_run_curves(result.run_dir)}")
    # Last, where they are read: a run that ended below its zero-shot score, say.
    for warning in result.summary.get("warnings", []):
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)


def compare(
    config: ConfigArgument,
    out: Annotated[Path, typer.Option(help="Folder for the runs and the leaderboard.")],
    grid: Annotated[list[str] | None, typer.Option(help="Another axis: KEY=V1,V2,... (repeatable).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per combination: train.seed, train.seed + 1, ...")] = 1,
    overrides: OverridesArgument = None,
    set_: SetOption = None,
) -> None:
    """Train every combination over several seeds and write leaderboard.csv and leaderboard.md."""
    # Every combination is parsed before torch and Lightning are imported, so a typo in the grid is
    # reported at once; the losses' own arguments are checked (with torch) before the first run.
    try:
        _, raw = load_config(config, config_overrides(overrides, set_))
        axes = [parse_grid_option(option) for option in grid or []]
        for label, variant in expand_grid(raw, axes):
            parse_config(variant, f"combination {label!r}")
    except ConfigError as error:
        raise fail(str(error)) from None
    _run_comparison(raw, out, axes, seeds)


def _run_comparison(raw: dict, out: Path, axes: list, seeds: int) -> None:
    from embedlab.pipelines.compare import RunStart
    from embedlab.pipelines.compare import compare as run_compare
    from embedlab.reporting.leaderboard import leaderboard_table
    from embedlab.reporting.report import build_report

    def announce(run: RunStart) -> None:
        # Plain text, never cut to the width: the combination's name in full, at the run's start.
        console.print(
            f"run {run.number} of {run.total}: {run.combination} seed {run.seed}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    try:
        comparison = run_compare(raw, out, grid=axes, seeds=seeds, on_run=announce)
    except (ConfigError, ValueError, TypeError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    print_table(leaderboard_table(comparison.rows, comparison.metrics))
    console.print(f"leaderboard: {comparison.markdown_path} and {comparison.csv_path}")
    console.print(f"report: {build_report(out)}")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the runs and the leaderboard.")] = Path("demo-output"),
    seeds: Annotated[int, typer.Option(help="Seeds per loss.")] = 1,
) -> None:
    """The founding comparison: one model, five metric losses (the last the recipe's), on Fashion-MNIST."""
    raw = read_yaml(packaged_configs()[DEMO_CONFIG])
    _run_comparison(raw, out, [], seeds)
