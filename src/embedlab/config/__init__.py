"""The experiment config: typed sections, YAML in, resolved YAML out; an unknown key is an error.

A config addresses every setting by a dotted key (`model.backbone`, `loss.name`, `train.epochs`), which
is also how `--set KEY=VALUE` and `--grid KEY=V1,V2` name them. The `loss` section (and each entry of a
loss list) takes the loss class's own keyword arguments beside `name`, as pytorch-metric-learning names
them; those are checked against the class when it is built. Metric names (`train.metrics`,
`train.monitor`) are checked when the config is read, before numpy or torch is imported.
"""

from embedlab.config.grids import expand_grid, parse_grid_option
from embedlab.config.loading import (
    ConfigError,
    load_config,
    packaged_configs,
    parse_assignment,
    parse_config,
    read_yaml,
    resolve_config_path,
    set_dotted,
)
from embedlab.config.reference import reference_markdown
from embedlab.config.schema import (
    AugmentBlock,
    DataConfig,
    DOLGConfig,
    ExperimentConfig,
    LossConfig,
    MinerConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    SyntheticDataset,
    TrainConfig,
    ValidationSplitConfig,
    parse_synthetic_dataset,
)

__all__ = [
    "AugmentBlock",
    "ConfigError",
    "DOLGConfig",
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "MinerConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "SyntheticDataset",
    "TrainConfig",
    "ValidationSplitConfig",
    "expand_grid",
    "load_config",
    "packaged_configs",
    "parse_assignment",
    "parse_config",
    "parse_grid_option",
    "parse_synthetic_dataset",
    "read_yaml",
    "reference_markdown",
    "resolve_config_path",
    "set_dotted",
]
