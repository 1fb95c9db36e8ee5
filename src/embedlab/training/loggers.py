"""Lightning's experiment loggers for a run: TensorBoard and CSV always, MLflow when it is installed.

Everything goes under RUN_DIR/logs/ so that a run folder stays self-contained:
  logs/tensorboard/   event files (`tensorboard --logdir RUN_DIR/logs/tensorboard`)
  logs/csv/           Lightning's metrics.csv and hparams.yaml
  logs/mlruns/        MLflow's file store, unless MLFLOW_TRACKING_URI names a tracking server
Each logger is pinned to one folder (no version_N sub-folders), so a resumed run appends to its logs.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

LOG_DIR = "logs"
MLFLOW_EXPERIMENT = "embedlab"


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def run_loggers(run_dir: Path, config: dict[str, Any]) -> list[Logger]:
    """The loggers of the run in `run_dir`, each given the resolved config as its hyperparameters
    (nested sections are flattened by Lightning: `train/epochs`)."""
    root = run_dir / LOG_DIR
    # A resumed run appends to its own logs, so Lightning's notice about a non-empty folder is expected;
    # the loss and the metrics are logged per epoch, so the step logging interval does not matter.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")
    loggers: list[Logger] = [
        TensorBoardLogger(save_dir=root, name="tensorboard", version="", default_hp_metric=False),
        CSVLogger(save_dir=root, name="csv", version=""),
    ]
    if mlflow_installed():
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or (root / "mlruns").resolve().as_uri()
        loggers.append(
            MLFlowLogger(
                experiment_name=MLFLOW_EXPERIMENT,
                run_name=f"{run_dir.parent.name}/{run_dir.name}",
                tracking_uri=tracking_uri,
            )
        )
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers
