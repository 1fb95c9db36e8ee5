"""The runs a report is made of: a comparison folder's runs, or one run folder, read from disk."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from embedlab.config import ExperimentConfig, load_config
from embedlab.reporting.leaderboard import ranked_metrics
from embedlab.training.history import read_history
from embedlab.training.run_dir import CONFIG_FILE, HISTORY_FILE, SNAPSHOT_FILE, SUMMARY_FILE, read_json
from embedlab.training.snapshot import RetrievalSnapshot, read_snapshot

COMPARISON_FILE = "comparison.json"


def slug(text: str) -> str:
    """A combination's name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120] or "default"


def comparison_run_dir(folder: Path, combination: str, seed: int) -> Path:
    """Where a comparison keeps the run of one combination and seed: DIR/runs/<slug>/seed-<seed>."""
    return folder / "runs" / slug(combination) / f"seed-{seed}"


@dataclass(frozen=True)
class RunRecord:
    """One finished run: which combination and seed it is, and what its folder holds."""

    combination: str
    seed: int
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, str]]
    config: ExperimentConfig
    config_text: str

    @cached_property
    def snapshot(self) -> RetrievalSnapshot | None:
        """The retrieval snapshot of the last epoch, or None for runs made before runs saved one."""
        path = self.run_dir / SNAPSHOT_FILE
        return read_snapshot(path) if path.is_file() else None


def load_run(run_dir: Path, combination: str | None = None) -> RunRecord:
    """Read a finished run folder (summary.json, metrics.csv, config.yaml); the combination defaults to
    the folder's name."""
    summary = read_json(run_dir / SUMMARY_FILE)
    config, _ = load_config(run_dir / CONFIG_FILE)
    return RunRecord(
        combination=combination or run_dir.name,
        seed=config.train.seed,
        run_dir=run_dir,
        summary=summary,
        history=read_history(run_dir / HISTORY_FILE),
        config=config,
        config_text=(run_dir / CONFIG_FILE).read_text(),
    )


def load_runs(folder: str | Path) -> list[RunRecord]:
    """The runs of a comparison folder (its comparison.json), or of a single run folder (summary.json).

    A comparison's runs live in DIR/runs/<slug of the combination>/seed-<seed>, as `compare` made them.
    """
    folder = Path(folder)
    listing = folder / COMPARISON_FILE
    if listing.is_file():
        entries = json.loads(listing.read_text())["runs"]
        return [
            load_run(comparison_run_dir(folder, e["combination"], e["seed"]), e["combination"])
            for e in entries
        ]
    if (folder / SUMMARY_FILE).is_file():
        return [load_run(folder)]
    raise FileNotFoundError(
        f"{folder} holds neither {COMPARISON_FILE} (a folder made by `embedlab compare`) nor {SUMMARY_FILE} "
        "(a finished run folder made by `embedlab train`)"
    )


def leaderboard_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The metrics `compare` ranks by: its leaderboard's metrics that every run computed."""
    available = set.intersection(*(set(run.summary["metrics"]) for run in runs))
    return ranked_metrics(available)
