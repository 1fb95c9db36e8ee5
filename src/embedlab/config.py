"""The experiment config: typed sections, YAML in, resolved YAML out; an unknown key is an error.

A config addresses every setting by a dotted key (`model.backbone`, `loss.name`, `train.epochs`), which
is also how `--set KEY=VALUE` and `--grid KEY=V1,V2` name them. The `loss` section (and each entry of a
loss list) takes the loss class's own keyword arguments beside `name`, as pytorch-metric-learning names
them; those are checked against the class when it is built.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be used, with the key and the fix in its message."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ValidationSplitConfig(_Section):
    """How validation data is made when the dataset brings none (the split is recorded in the run)."""

    split: Literal["auto", "predefined", "classes", "images"] = Field(
        "auto",
        description="auto: the dataset's own test split if it has one, else held-out classes; "
        "classes: hold out whole classes (open set); images: hold out images of every class",
    )
    fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of classes or images held out")
    seed: int = Field(0, description="seed of the split, independent of train.seed")


class AugmentConfig(_Section):
    """Augmentations applied on batches of tensors during training."""

    flip: bool = Field(False, description="random horizontal flip")
    crop_padding: int = Field(0, ge=0, description="pad by this many pixels, then crop back at random")


class DataConfig(_Section):
    dataset: str = Field(
        "fashion-mnist", description="a built-in name (fashion-mnist, mnist-5k, digits), a folder, or a CSV"
    )
    root: str | None = Field(
        None, description="folder the CSV's relative paths start from (default: its own)"
    )
    image_size: int | None = Field(None, gt=0, description="side in pixels; default: the set's own size")
    channels: Literal[1, 3] | None = Field(None, description="default: 1 for grey built-in sets, 3 for files")
    validation: ValidationSplitConfig = ValidationSplitConfig()
    gallery: Literal["auto", "train", "validation"] = Field(
        "auto",
        description="what the validation queries search: train images, or the validation set itself "
        "(each query's own row excluded); auto: train for a predefined test split, else validation",
    )
    max_images_per_split: int | None = Field(None, gt=0, description="subsample each split (quick runs)")
    m_per_class: int | None = Field(None, gt=0, description="m images per class in every batch")
    augment: AugmentConfig = AugmentConfig()
    num_workers: int = Field(0, ge=0, description="data-loading processes for image files")


class DOLGConfig(_Section):
    """The DOLG head (Yang et al., ICCV 2021; models/dolg.py): used when model.head is dolg."""

    local_stage: int = Field(
        -2,
        description="the backbone stage whose map feeds the local branch: an index into timm's "
        "feature_info (a ResNet's are the stem and layer1..layer4), negative counts from the end; "
        "it must come before the last stage, which feeds the global branch",
    )
    local_dim: int = Field(
        512, gt=0, description="channels of the local branch; the fused vector has twice as many"
    )
    dilations: list[int] = Field(
        default_factory=lambda: [3, 6, 9],
        min_length=1,
        description="dilation rates of the multi-atrous block's parallel 3x3 convolutions",
    )

    @field_validator("dilations")
    @classmethod
    def _dilations_positive(cls, value: list[int]) -> list[int]:
        if any(rate < 1 for rate in value):
            raise ValueError(f"every dilation rate must be 1 or more, got {value}")
        return value


class ModelConfig(_Section):
    backbone: str = Field("small_cnn", description="a timm model name, small_cnn or small_resnet")
    backbone_args: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the backbone (timm's create_model, e.g. drop_path_rate)",
    )
    pretrained: bool = Field(False, description="timm's pretrained weights (needs a reachable hub)")
    weights_path: str | None = Field(None, description="a local weights file for the backbone")
    head: Literal["global", "dolg"] = Field(
        "global",
        description="global: pooling of the last stage's map; dolg: DOLG's orthogonal fusion of a local "
        "branch (an intermediate stage) with the pooled last stage (model.dolg; timm backbones only)",
    )
    dolg: DOLGConfig = DOLGConfig()
    pooling: Literal["gem", "avg", "max", "flatten"] = Field(
        "gem",
        description="global pooling of the feature map (of the global branch with head dolg); flatten "
        "keeps the layout (fixed input size)",
    )
    gem_p: float = Field(3.0, gt=0.0, description="initial GeM exponent (learned)")
    neck: Literal["bn", "linear"] = Field(
        "bn", description="bn: Linear then BatchNorm; linear: Linear with bias"
    )
    embedding_dim: int = Field(128, gt=0, description="size of the L2-normalised embedding")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the neck's linear layer")

    @model_validator(mode="after")
    def _dolg_pools_a_vector(self) -> ModelConfig:
        if self.head == "dolg" and self.pooling == "flatten":
            raise ValueError(
                "model.pooling flatten does not fit model.head dolg, whose global branch needs a "
                "vector: use gem, avg or max"
            )
        return self


class MinerConfig(BaseModel):
    """A pytorch-metric-learning miner by name, with its keyword arguments beside `name`."""

    model_config = ConfigDict(extra="allow")
    name: str

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        return _call_label(self.name, self.kwargs())


def _call_label(name: str, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join(f"{key}={value}" for key, value in kwargs.items())
    return f"{name}({args})" if args else name


class LossConfig(BaseModel):
    """A loss by name with its own keyword arguments beside `name`.

    `weight` (its factor in a sum of losses), `lr` (the learning rate of its parameters) and `miner`
    (the miner that feeds it) are embedlab's; every other key goes to the loss class.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
    lr: float | None = Field(None, gt=0.0)
    miner: MinerConfig | None = None

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        text = _call_label(self.name, self.kwargs())
        return text if self.miner is None else f"{text} mined by {self.miner.label()}"


class OptimizerConfig(_Section):
    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="SGD is Nesterov with momentum")
    lr: float = Field(1e-3, gt=0.0, description="learning rate of the model (peak, after warm-up)")
    head_lr: float | None = Field(None, gt=0.0, description="learning rate of loss parameters; default lr")
    weight_decay: float = Field(1e-4, ge=0.0, description="on the model's weights, not norms or biases")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only")


class SchedulerConfig(_Section):
    name: Literal["cosine", "step", "constant"] = Field(
        "cosine", description="learning-rate schedule, per step"
    )
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up, in (fractional) epochs")
    step_epochs: int = Field(1, gt=0, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final lr as a share of lr")


class TrainConfig(_Section):
    epochs: int = Field(1, gt=0, description="passes over the training images")
    batch_size: int = Field(64, gt=1, description="training images per step")
    seed: int = Field(0, description="seed of weights, batches and augmentation")
    eval_batch_size: int = Field(512, gt=0, description="images per step when embedding")
    eval_every_n_epochs: int = Field(1, gt=0, description="validation every n epochs, and after the last")
    max_steps_per_epoch: int | None = Field(None, gt=0, description="cap steps per epoch (quick runs)")
    precision: Literal["32-true", "bf16-mixed"] = Field("32-true", description="Lightning's precision")
    threads: int | None = Field(None, gt=0, description="torch threads; default: all cores")
    channels_last: bool = Field(
        False, description="train the model in channels-last memory format (faster BN-conv nets on CPU)"
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="keep an exponential moving average of the weights with this decay per step, "
        "and validate, checkpoint and export the average",
    )
    metrics: list[str] = Field(
        default_factory=lambda: [
            "precision_at_1",
            "recall_at_1",
            "recall_at_5",
            "recall_at_10",
            "r_precision",
            "map_at_r",
            "map",
        ],
        description="validation metrics (names from METRICS.md)",
    )
    monitor: str = Field("map_at_r", description="the metric that picks the best checkpoint")


class ExperimentConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig | list[LossConfig] = Field(
        LossConfig(name="CircleLoss", m=0.4, gamma=80),
        description="one loss block or a weighted list (below)",
    )
    miner: MinerConfig | None = Field(None, description="the miner for every loss without its own")
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig()
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="compare: dotted key -> values; every combination is run"
    )

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_list_not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("loss: give at least one loss")
        return value

    @model_validator(mode="after")
    def _monitor_is_a_metric(self) -> ExperimentConfig:
        if self.train.monitor not in self.train.metrics:
            raise ValueError(f"train.monitor {self.train.monitor!r} is not one of train.metrics")
        return self

    def losses(self) -> list[LossConfig]:
        return self.loss if isinstance(self.loss, list) else [self.loss]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude={"grid"}), sort_keys=False)


# ---------------------------------------------------------------------------------------------------------
# Loading, with errors that name the key


def _section_fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _valid_keys_near(path: Sequence[str | int]) -> list[str]:
    """The valid keys of the section that `path` points into."""
    model: type[BaseModel] = ExperimentConfig
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        location = [part for part in item["loc"] if not (isinstance(part, str) and part[:1].isupper())]
        key = ".".join(str(part) for part in location)
        if item["type"] == "extra_forbidden":
            valid = _valid_keys_near(location)
            hint = difflib.get_close_matches(str(location[-1]), valid, n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"  unknown key {key!r}.{suggestion} Valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_config(raw: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE read as YAML (numbers, booleans, lists and mappings work)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {assignment!r}")
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping; a key that does not exist in the schema is an error."""
    parts = key.split(".")
    _check_dotted_key(parts)
    node: dict[str, Any] = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _check_dotted_key(parts: list[str]) -> None:
    model: type[BaseModel] | None = ExperimentConfig
    for depth, part in enumerate(parts):
        if model is None:
            return
        if model.model_config.get("extra") == "allow":
            return
        fields = _section_fields(model)
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            hint = difflib.get_close_matches(part, list(fields), n=1)
            suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"unknown key {'.'.join(parts)!r}.{suggestion} "
                f"Valid keys in {where}: {', '.join(sorted(fields))}"
            )
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        model = nested[0] if nested else None


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Read a YAML config (or start from `base`), apply `--set` overrides, validate.

    Returns the validated config and the raw mapping it came from (the grid expands the raw mapping).
    """
    raw = copy.deepcopy(dict(base or {})) if path is None else read_yaml(path)
    for assignment in overrides:
        key, value = parse_assignment(assignment)
        set_dotted(raw, key, value)
    return parse_config(raw, str(path or "config")), raw


# ---------------------------------------------------------------------------------------------------------
# Grids for `compare`


def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,...` from the command line; each value read as YAML."""
    key, sep, values = option.partition("=")
    if not sep or not values:
        raise ConfigError(f"expected --grid KEY=V1,V2,..., got {option!r}")
    _check_dotted_key(key.strip().split("."))
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


def _value_label(value: Any) -> str:
    """A readable name for a grid value: a block by its class and arguments, a list of blocks joined."""
    if isinstance(value, Mapping) and "name" in value:
        return LossConfig.model_validate(value).label()
    if isinstance(value, list) and value and all(isinstance(v, Mapping) and "name" in v for v in value):
        return " + ".join(_block_label(v) for v in value)
    return str(value)


def _block_label(block: Mapping[str, Any]) -> str:
    config = LossConfig.model_validate(block)
    return config.label() if config.weight == 1.0 else f"{config.weight:g}*{config.label()}"


def expand_grid(
    raw: Mapping[str, Any], extra_axes: Sequence[tuple[str, list[Any]]] = ()
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every combination of the config's own grid and the command line's, as (label, raw config).

    The label names the combination, e.g. `loss=CircleLoss(m=0.4, gamma=80) optimizer.lr=0.001`.
    """
    base = {key: value for key, value in raw.items() if key != "grid"}
    axes: list[tuple[str, list[Any]]] = []
    for key, values in dict(raw.get("grid") or {}).items():
        _check_dotted_key(key.split("."))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values")
        axes.append((key, values))
    axes.extend(extra_axes)
    if not axes:
        yield "default", copy.deepcopy(base)
        return
    for combination in itertools.product(*(values for _, values in axes)):
        variant = copy.deepcopy(base)
        parts = []
        for (key, _), value in zip(axes, combination, strict=True):
            set_dotted(variant, key, copy.deepcopy(value))
            parts.append(f"{key}={_value_label(value)}")
        yield " ".join(parts), variant


# ---------------------------------------------------------------------------------------------------------
# The reference of every key, generated from the schema (docs/config.md is this text)


def _type_name(annotation: Any) -> str:
    """A short, table-safe name of a field's type: `int or None`, `'cosine', 'step' or 'constant'`."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in arguments)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in arguments)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in arguments)}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def reference_markdown() -> str:
    """Markdown tables of every config key: its type, default and meaning."""
    lines = [
        "# Config reference",
        "",
        "Generated from `embedlab.config` (a test keeps this file equal to `reference_markdown()`).",
        "Every key is addressed by its dotted name in YAML, `--set KEY=VALUE` and `--grid KEY=V1,V2`.",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        rows = []
        nested = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            candidates = [annotation, *getattr(annotation, "__args__", ())]
            inner = [c for c in candidates if isinstance(c, type) and issubclass(c, _Section)]
            if inner and inner[0] is annotation:
                nested.append((inner[0], f"{prefix}{name}"))
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(exclude_defaults=False)
            rows.append(
                f"| `{prefix}{name}` | {_type_name(annotation)} | `{default!r}` | {field.description or ''} |"
            )
        if rows:
            lines.extend(["", f"## {prefix.rstrip('.') or 'top level'}", ""])
            lines.extend(["| key | type | default | meaning |", "|---|---|---|---|", *rows])
        for inner_model, name in nested:
            section(inner_model, f"{name}.")

    section(ExperimentConfig, "")
    lines += [
        "",
        "## loss and miner blocks",
        "",
        "`loss` is one block or a list of blocks. A block is `{name: CLASS, <keyword arguments of CLASS>}`",
        "with pytorch-metric-learning's class and argument names",
        "(`{name: CircleLoss, m: 0.4, gamma: 80}`) or embedlab's own heads (docs/losses.md).",
        "Three keys are embedlab's: `weight` (the block's factor in a sum of losses), `lr` (the learning",
        "rate of the block's own parameters, such as class centres) and `miner` (a block",
        "`{name: MINER, ...}` that feeds this loss). `num_classes`, `embedding_size` and `class_counts` are",
        "filled in from the data and the model. The top-level `miner` feeds every loss without a miner of",
        "its own. An argument the class does not take is an error that names it.",
        "",
    ]
    return "\n".join(lines)
