"""The run folder: what a training run writes, and how a finished run is loaded back.

RUN_DIR/
  config.yaml          the resolved config
  split.json           which classes and how many images went where
  model.json           input channels and size, embedding size (to rebuild the embedder), and the
                       test-time preprocessing (resize, no crop, normalisation)
  metrics.csv          one row per epoch trained (epoch 1, 2, ...): loss, validation metrics, times,
                       throughput; epoch 0 is the zero-shot row when the run has one (history.py)
  summary.json         the final metrics under their METRICS.md names, the zero-shot ones, warnings,
                       times, versions
  retrieval.npz        the last epoch's query embeddings and top-k neighbours, for reports (snapshot.py)
  checkpoints/best.ckpt, checkpoints/last.ckpt   written atomically
  logs/                TensorBoard, CSV and (when installed) MLflow logs (loggers.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedlab.atomic import atomic_write_text
from embedlab.config import ExperimentConfig, load_config

if TYPE_CHECKING:
    from embedlab.models.embedder import Embedder

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
MODEL_FILE = "model.json"
HISTORY_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
SNAPSHOT_FILE = "retrieval.npz"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {path.parent} a finished embedlab run?")
    return json.loads(path.read_text())


@dataclass
class LoadedRun:
    run_dir: Path
    config: ExperimentConfig
    embedder: Embedder
    checkpoint_path: Path


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    name = BEST_CHECKPOINT if which == "best" else LAST_CHECKPOINT
    return run_dir / CHECKPOINT_DIR / name


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """Rebuild a run's embedder from its config and load its checkpoint (weights_only=True)."""
    # torch and timm: loaded here, so that reading a run's files (reports, comparisons) needs neither.
    from embedlab.models.embedder import build_embedder
    from embedlab.models.weights import load_torch_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    config, _ = load_config(run_dir / CONFIG_FILE)
    shape = read_json(run_dir / MODEL_FILE)
    model_cfg = config.model.model_copy(update={"pretrained": False, "weights_path": None})
    embedder = build_embedder(model_cfg, int(shape["channels"]), int(shape["image_size"]))
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; the run has not finished an epoch")
    checkpoint = load_torch_file(path)
    state = {
        k.removeprefix("embedder."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("embedder.")
    }
    embedder.load_state_dict(state)
    embedder.eval()
    return LoadedRun(run_dir=run_dir, config=config, embedder=embedder, checkpoint_path=path)
