"""Lightning's loggers under RUN_DIR/logs: TensorBoard and CSV always, MLflow only when installed."""

from __future__ import annotations

import csv

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from embedlab.config import load_config
from embedlab.training import loggers
from embedlab.training.fit import fit


def test_a_run_logs_its_metrics_and_config_to_tensorboard_and_csv(tmp_path, quick_digits) -> None:
    cfg, _ = load_config(None, [*quick_digits, "train.epochs=2", "train.max_steps_per_epoch=2"])
    result = fit(cfg, tmp_path / "run", progress=False)
    logs = tmp_path / "run" / "logs"

    events = EventAccumulator(str(logs / "tensorboard"))
    events.Reload()
    map_at_r = events.Scalars("val/map_at_r")
    assert map_at_r[-1].value == pytest.approx(result.metrics["map_at_r"], rel=1e-6)  # float32 in events
    assert len(map_at_r) == 2 and "train_loss" in events.Tags()["scalars"]

    with (logs / "csv" / "metrics.csv").open() as stream:
        rows = [r for r in csv.DictReader(stream) if r.get("val/precision_at_1")]
    assert float(rows[-1]["val/precision_at_1"]) == pytest.approx(result.metrics["precision_at_1"], rel=1e-6)
    hparams = yaml.safe_load((logs / "csv" / "hparams.yaml").read_text())
    assert hparams["train"]["epochs"] == 2 and hparams["data"]["dataset"] == "digits"


def test_mlflow_is_added_only_when_it_is_installed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(loggers, "mlflow_installed", lambda: False)
    kinds = [type(x).__name__ for x in loggers.run_loggers(tmp_path / "cmp" / "seed-0", {"a": 1})]
    assert kinds == ["TensorBoardLogger", "CSVLogger"]

    made = []

    class FakeMLFlowLogger:
        def __init__(self, **kwargs) -> None:
            made.append(kwargs)

        def log_hyperparams(self, params) -> None:
            made.append(params)

    monkeypatch.setattr(loggers, "mlflow_installed", lambda: True)
    monkeypatch.setattr(loggers, "MLFlowLogger", FakeMLFlowLogger)
    run_dir = tmp_path / "cmp" / "seed-0"
    assert len(loggers.run_loggers(run_dir, {"a": 1})) == 3
    assert made[0]["run_name"] == "cmp/seed-0" and made[0]["experiment_name"] == "embedlab"
    assert made[0]["tracking_uri"] == (run_dir / "logs" / "mlruns").resolve().as_uri()
    assert made[1] == {"a": 1}
