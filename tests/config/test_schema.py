"""The config sections: defaults, loss blocks, DOLG settings and metric names checked when read."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import embedlab
from embedlab.config import ConfigError, ExperimentConfig, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "embedlab" / "configs"


def test_defaults_validate() -> None:
    cfg = ExperimentConfig()
    assert cfg.losses()[0].name == "CircleLoss"
    assert cfg.losses()[0].kwargs() == {"m": 0.4, "gamma": 80}


def test_loss_keeps_its_own_keyword_arguments_and_embedlab_keys_apart() -> None:
    cfg = parse_config({"loss": [{"name": "CenterLoss", "weight": 0.01, "lr": 0.5, "alpha": 1}]})
    term = cfg.losses()[0]
    assert term.weight == 0.01 and term.lr == 0.5 and term.kwargs() == {"alpha": 1}


def test_monitor_must_be_a_computed_metric() -> None:
    with pytest.raises(ConfigError, match="train.monitor"):
        parse_config({"train": {"monitor": "map_at_r", "metrics": ["precision_at_1"]}})


def test_default_validation_metrics_are_the_evaluation_defaults() -> None:
    # config takes them from embedlab.metric_names so that reading a config never imports faiss
    from embedlab.evaluation import DEFAULT_METRICS

    assert ExperimentConfig().train.metrics == list(DEFAULT_METRICS)


def test_dolg_settings_are_checked_where_the_config_is_read() -> None:
    cfg, _ = load_config(None, ["model.head=dolg", "model.dolg.local_stage=3", "model.dolg.dilations=[2, 4]"])
    assert (cfg.model.dolg.local_stage, cfg.model.dolg.dilations, cfg.model.dolg.local_dim) == (
        3,
        [2, 4],
        512,
    )
    with pytest.raises(ConfigError, match=r"unknown key 'model.dolg.dilation'.*Did you mean 'dilations'"):
        load_config(None, ["model.dolg.dilation=[3]"])
    with pytest.raises(ConfigError, match=r"model.dolg.dilations.*1 or more"):
        load_config(None, ["model.head=dolg", "model.dolg.dilations=[0, 3]"])
    with pytest.raises(ConfigError, match=r"model.pooling flatten does not fit model.head dolg"):
        load_config(None, ["model.head=dolg", "model.pooling=flatten"])


def test_founding_config_is_the_founding_workflow() -> None:
    from embedlab.config import read_yaml

    founding = parse_config(read_yaml(CONFIGS / "fashion_mnist_founding.yaml"))
    # The founding workflow: the example network, 50-d, CircleLoss, batch 32, Adam at 1e-3, 10 epochs.
    assert (founding.model.backbone, founding.model.pooling, founding.model.neck) == (
        "pml_mnist_example",
        "flatten",
        "linear",
    )
    assert founding.model.embedding_dim == 50 and founding.train.batch_size == 32
    assert (founding.optimizer.name, founding.optimizer.lr, founding.train.epochs) == ("adam", 1e-3, 10)
    assert [loss.name for loss in founding.losses()] == ["CircleLoss"]
    assert founding.losses()[0].kwargs() == {"m": 0.4, "gamma": 80}
    assert founding.data.augment == []


@pytest.mark.parametrize(
    ("settings", "key", "bad", "hint"),
    [
        ({"metrics": ["map_at_r", "precison_at_5"]}, "train.metrics", "precison_at_5", "precision_at_1"),
        ({"monitor": "map@r"}, "train.monitor", "map@r", "map_at_r"),
        ({"metrics": ["map_at_r", "recall_at_05"]}, "train.metrics", "recall_at_05", ""),
    ],
)
def test_an_unknown_metric_name_fails_when_the_config_is_read(
    settings: dict[str, object], key: str, bad: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"train": settings})
    message = str(error.value)
    assert f"{key}: " in message and f"unknown metric {bad!r}" in message
    assert "precision_at_<k>" in message
    if hint:
        assert f"Did you mean {hint!r}?" in message


def test_metric_names_given_twice_or_by_set_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"train.metrics: .*'map_at_r' is requested twice"):
        parse_config({"train": {"metrics": ["map_at_r", "map_at_r"]}})
    with pytest.raises(ConfigError, match=r"train.metrics: .*unknown metric 'ndcg'"):
        load_config(None, ["train.metrics=[map_at_r, ndcg]"])
    cfg, _ = load_config(None, ["train.metrics=[precision_at_5, map_at_100, mrr]", "train.monitor=mrr"])
    assert cfg.train.metrics == ["precision_at_5", "map_at_100", "mrr"]


# Run in a fresh interpreter: the test session itself has long imported torch and numpy.
TYPO_BEFORE_TORCH = """
import sys

from embedlab.config import ConfigError, load_config

try:
    load_config(sys.argv[1])
except ConfigError as error:
    message = str(error)
else:
    raise SystemExit("a config with train.metrics: [precison_at_1] was accepted")
assert "train.metrics" in message and "'precison_at_1'" in message, message
assert "Did you mean 'precision_at_1'?" in message, message
heavy = [name for name in ("torch", "numpy") if name in sys.modules]
assert not heavy, f"reading a config imported {heavy}"
"""


def test_a_metric_typo_fails_at_load_time_before_torch_or_numpy_is_imported(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  epochs: 2\n  metrics: [precison_at_1]\n")
    source = str(Path(embedlab.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", TYPO_BEFORE_TORCH, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_gpu_training_keys_default_to_the_machine_and_take_their_values() -> None:
    train = ExperimentConfig().train
    assert (train.accelerator, train.devices, train.precision, train.compile) == (
        "auto",
        None,
        "32-true",
        False,
    )
    assert ExperimentConfig().data.num_workers is None
    cfg, _ = load_config(
        None,
        ["train.accelerator=gpu", "train.devices=4", "train.precision=16-mixed", "train.compile=true"],
    )
    assert (cfg.train.accelerator, cfg.train.devices, cfg.train.precision, cfg.train.compile) == (
        "gpu",
        4,
        "16-mixed",
        True,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.accelerator=cuda", r"train.accelerator"),
        ("train.precision=16", r"train.precision"),
        ("train.devices=0", r"train.devices"),
        ("data.dataset=synthetic:100", r"synthetic:IMAGES:CLASSES"),
        ("data.dataset=synthetic:10:8", r"at least 2 images per class, got 10 images of 8 classes"),
    ],
)
def test_gpu_training_keys_and_synthetic_sizes_are_checked_when_read(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_synthetic_dataset_sizes() -> None:
    from embedlab.config import SyntheticDataset, parse_synthetic_dataset

    assert parse_synthetic_dataset("synthetic:512:16") == SyntheticDataset(images=512, classes=16)
    assert parse_synthetic_dataset("synthetic") == SyntheticDataset(images=2048, classes=32)
    assert parse_synthetic_dataset("digits") is None
    assert parse_synthetic_dataset("synthetic-photos") is None  # a folder of that name stays a folder
