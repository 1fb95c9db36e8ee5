"""The experiment config's typed sections (pydantic), checked when read; an unknown key is an error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from embedlab.config.augment_blocks import check_augment_blocks
from embedlab.metric_names import DEFAULT_METRICS, parse_metric, parse_metrics


class Section(BaseModel):
    """A section of the config: an unknown key is an error, and so is an assignment of a bad value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ValidationSplitConfig(Section):
    """How validation data is made when the dataset brings none (the split is recorded in the run)."""

    split: Literal["auto", "predefined", "classes", "images"] = Field(
        "auto",
        description="auto: the dataset's own test split (a CSV's split column) if it has one, else "
        "held-out classes; classes: hold out whole classes (open set); images: hold out images of every "
        "class; classes or images given for a CSV with a split column re-split it, with a warning",
    )
    fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of classes or images held out")
    seed: int = Field(0, description="seed of the split, independent of train.seed")


class AugmentBlock(BaseModel):
    """A torchvision.transforms.v2 transform by class name, its keyword arguments beside `name`
    (`{name: RandomResizedCrop, scale: [0.6, 1.0]}`); checked against the class when the config is read."""

    model_config = ConfigDict(extra="allow")
    name: str

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        return _call_label(self.name, self.kwargs())


def _legacy_augment_blocks(value: Any) -> Any:
    """The blocks that the old `augment: {flip: ..., crop_padding: ...}` settings meant (run folders and
    configs written before augmentation by name keep working)."""
    if not isinstance(value, Mapping):
        return value
    unknown = sorted(set(value) - {"flip", "crop_padding"})
    if unknown:
        raise ValueError(
            f"data.augment is a list of torchvision.transforms.v2 blocks, e.g. "
            f"[{{name: RandomHorizontalFlip}}, {{name: RandomResizedCrop, scale: [0.6, 1.0]}}]; the "
            f"mapping form takes only flip and crop_padding, not {', '.join(map(repr, unknown))}"
        )
    blocks: list[dict[str, Any]] = []
    if value.get("crop_padding"):
        blocks.append({"name": "RandomCrop", "padding": int(value["crop_padding"])})
    if value.get("flip"):
        blocks.append({"name": "RandomHorizontalFlip"})
    return blocks


@dataclass(frozen=True)
class SyntheticDataset:
    """`data.dataset: synthetic:IMAGES:CLASSES`: random images, images // classes (or one more) per class."""

    images: int
    classes: int


SYNTHETIC_NAME = "synthetic"
#: What `data.dataset: synthetic` alone makes: 64 images of each of 32 classes.
SYNTHETIC_DEFAULT = SyntheticDataset(images=2048, classes=32)


def parse_synthetic_dataset(name: str) -> SyntheticDataset | None:
    """The sizes of `synthetic` or `synthetic:IMAGES:CLASSES`, None for any other dataset name; a
    ValueError for a synthetic name whose sizes are malformed or leave a class without a positive."""
    if name == SYNTHETIC_NAME:
        return SYNTHETIC_DEFAULT
    if not name.startswith(f"{SYNTHETIC_NAME}:"):
        return None
    parts = name.split(":")[1:]
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{name!r}: write synthetic or synthetic:IMAGES:CLASSES, e.g. synthetic:8192:64")
    images, classes = int(parts[0]), int(parts[1])
    # Two images per class at least, so that every validation query has a positive to find.
    if classes < 2 or images < 2 * classes:
        raise ValueError(
            f"{name!r}: needs 2 classes or more and at least 2 images per class, got {images} images of "
            f"{classes} classes"
        )
    return SyntheticDataset(images=images, classes=classes)


class DataConfig(Section):
    dataset: str = Field(
        "fashion-mnist",
        description="a built-in name (fashion-mnist, mnist-5k, digits), synthetic or "
        "synthetic:IMAGES:CLASSES (seeded random images in memory, for throughput), a folder, or a CSV",
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
    m_per_class: int | None = Field(
        None, gt=0, description="up to m distinct images of each identity in a batch (docs/sampling.md)"
    )
    sampler: Literal["auto", "random", "m_per_class", "class_balanced"] = Field(
        "auto",
        description="how training batches are drawn (docs/sampling.md): random: shuffled images; "
        "m_per_class: min(data.m_per_class, its images) distinct images of each identity drawn, "
        "identities drawn until the batch is full, no image twice; class_balanced: distinct images, "
        "each identity equally likely; auto: m_per_class when data.m_per_class is set, else random",
    )
    min_images_per_identity: int = Field(
        1,
        ge=1,
        description="identities with fewer images are left out of m_per_class and class_balanced "
        "batches: 1 keeps single-image identities in (negatives with no positive), 2 leaves them out; "
        "the random sampler draws every image",
    )
    augment: list[AugmentBlock] = Field(
        default_factory=list,
        description="training augmentation: torchvision.transforms.v2 blocks applied in order to each "
        "training image (uint8, before normalisation), e.g. [{name: RandomResizedCrop, scale: [0.6, "
        "1.0]}, {name: ColorJitter, brightness: 0.2}]; a size left out is the training image size; "
        "the old {flip: true, crop_padding: N} reads as RandomCrop(padding=N), RandomHorizontalFlip",
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        description="data-loading processes for image files; default: min(8, CPU cores - 1) where the "
        "images feed a CUDA GPU, 0 (the main process) on a CPU-only run",
    )
    skip_unreadable: bool = Field(
        False,
        description="image files are decoded once before training (cached by size and mtime); false: "
        "missing or undecodable ones stop the run, listed in one error; true: they are left out and "
        "counted in summary.json",
    )

    @field_validator("dataset")
    @classmethod
    def _synthetic_sizes_are_valid(cls, value: str) -> str:
        parse_synthetic_dataset(value)
        return value

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_from_legacy_keys(cls, value: Any) -> Any:
        return _legacy_augment_blocks(value)

    @field_validator("augment")
    @classmethod
    def _augment_blocks_are_transforms(
        cls, value: list[AugmentBlock], info: ValidationInfo
    ) -> list[AugmentBlock]:
        check_augment_blocks(value, info.data.get("image_size"))
        return value

    @model_validator(mode="after")
    def _sampler_has_its_settings(self) -> DataConfig:
        # The rule of embedlab.data.loaders.resolve_sampler, which config (a lower layer) cannot import.
        if self.sampler == "m_per_class" and self.m_per_class is None:
            raise ValueError(
                "data.sampler m_per_class needs data.m_per_class (the images of each identity in a "
                "batch): set data.m_per_class, e.g. 4, or choose data.sampler random or class_balanced"
            )
        random = self.sampler == "random" or (self.sampler == "auto" and self.m_per_class is None)
        if random and self.min_images_per_identity > 1:
            raise ValueError(
                f"data.min_images_per_identity={self.min_images_per_identity} leaves identities out of "
                "m_per_class and class_balanced batches, and data.sampler is random (auto without "
                "data.m_per_class is random), which draws every image: set data.sampler or "
                "data.m_per_class, or leave data.min_images_per_identity at 1"
            )
        return self


class DOLGConfig(Section):
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


class ModelConfig(Section):
    backbone: str = Field("small_cnn", description="a timm model name, small_cnn or small_resnet")
    backbone_args: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the backbone (timm's create_model, e.g. drop_path_rate)",
    )
    pretrained: bool = Field(
        False, description="timm's pretrained weights (needs a reachable hub; ignored with weights_path)"
    )
    weights_path: str | None = Field(
        None, description="a local weights file for the backbone, loaded instead of the hub's (offline)"
    )
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

    `weight` (its factor in a sum of losses), `lr` (the learning rate of its parameters), `miner` (the
    miner that feeds it) and `memory_size` (a cross-batch memory around it) are embedlab's; every other
    key goes to the loss class.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float = 1.0
    lr: float | None = Field(None, gt=0.0)
    miner: MinerConfig | None = None
    memory_size: int | None = Field(
        None,
        gt=0,
        description="wrap the loss in pytorch-metric-learning's CrossBatchMemory holding this many past "
        "embeddings (pair losses only)",
    )

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def label(self) -> str:
        text = _call_label(self.name, self.kwargs())
        if self.memory_size is not None:
            text = f"{text} with a memory of {self.memory_size}"
        return text if self.miner is None else f"{text} mined by {self.miner.label()}"


class OptimizerConfig(Section):
    name: str = Field(
        "adamw",
        min_length=1,
        description="any of timm's optimizers by name (timm.optim.create_optimizer_v2: adamw, adam, "
        "sgd (Nesterov momentum), lamb, lion, adan, ...), checked before the run starts",
    )
    lr: float = Field(1e-3, gt=0.0, description="learning rate of the model (peak, after warm-up)")
    backbone_lr: float | None = Field(
        None,
        gt=0.0,
        description="learning rate of the backbone (its last stage's, with layer_decay); default lr",
    )
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="layer-wise learning-rate decay over the backbone (timm's grouping of its blocks or "
        "stages): each group further from the output learns at this factor of the next one's rate, the "
        "last at backbone_lr; timm backbones only",
    )
    head_lr: float | None = Field(None, gt=0.0, description="learning rate of loss parameters; default lr")
    weight_decay: float = Field(1e-4, ge=0.0, description="on the model's weights, not norms or biases")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="for optimizers with momentum (sgd)")
    args: dict[str, Any] = Field(
        default_factory=dict, description="further keyword arguments of the optimizer (betas, eps, ...)"
    )


#: Schedules of timm's scheduler factory (timm.scheduler.create_scheduler_v2), stepped every update.
TIMM_SCHEDULES = ("timm.cosine", "timm.tanh", "timm.step", "timm.multistep", "timm.poly")


class SchedulerConfig(Section):
    name: Literal[
        "cosine", "step", "constant", "timm.cosine", "timm.tanh", "timm.step", "timm.multistep", "timm.poly"
    ] = Field(
        "cosine",
        description="learning-rate schedule, per step; timm.NAME: timm's scheduler NAME "
        "(create_scheduler_v2, stepped per update, warmup_epochs and min_lr_ratio passed on; more of "
        "its arguments in scheduler.args)",
    )
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up, in (fractional) epochs")
    step_epochs: int = Field(1, gt=0, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final lr as a share of lr")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="timm schedules: further arguments of create_scheduler_v2 (cycle_limit, "
        "decay_milestones, k_decay, ...)",
    )

    @model_validator(mode="after")
    def _args_only_for_timm(self) -> SchedulerConfig:
        if self.args and self.name not in TIMM_SCHEDULES:
            raise ValueError(f"scheduler.args is for timm's schedules ({', '.join(TIMM_SCHEDULES)})")
        return self


class TrainConfig(Section):
    epochs: int = Field(1, gt=0, description="passes over the training images")
    batch_size: int = Field(64, gt=1, description="training images per step")
    seed: int = Field(0, description="seed of weights, batches and augmentation")
    eval_batch_size: int = Field(512, gt=0, description="images per step when embedding")
    eval_every_n_epochs: int = Field(1, gt=0, description="validation every n epochs, and after the last")
    max_steps_per_epoch: int | None = Field(None, gt=0, description="cap steps per epoch (quick runs)")
    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="auto: the CUDA GPU when torch sees one, else the CPU; gpu without one is an error",
    )
    devices: int | None = Field(
        None,
        gt=0,
        description="training processes (DDP) per node; --devices wins; default: torchrun's, else 1",
    )
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = Field(
        "32-true",
        description="Lightning's precision; 16-mixed (float16 with a gradient scaler) needs a CUDA GPU",
    )
    freeze_backbone_epochs: int = Field(
        0,
        ge=0,
        description="train only the neck and the loss for this many epochs (backbone weights and "
        "batch-norm statistics frozen), then the whole model",
    )
    accumulate_grad_batches: int = Field(
        1, gt=0, description="optimizer step every n batches, their gradients summed (a larger batch)"
    )
    gradient_clip_val: float | None = Field(
        None, gt=0.0, description="clip gradients to this norm (or value, with gradient_clip_algorithm)"
    )
    gradient_clip_algorithm: Literal["norm", "value"] = Field(
        "norm", description="norm: rescale the whole gradient; value: clamp each element"
    )
    threads: int | None = Field(None, gt=0, description="torch threads; default: all cores")
    channels_last: bool = Field(
        False, description="train the model in channels-last memory format (faster BN-conv nets on CPU)"
    )
    compile: bool = Field(False, description="torch.compile the embedder (checkpoints keep plain keys)")
    compile_backend: str = Field(
        "inductor", min_length=1, description="torch.compile's backend when train.compile is true"
    )
    ema_decay: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="keep an exponential moving average of the weights with this decay per step, "
        "and validate, checkpoint and export the average",
    )
    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        description="validation metrics (names from METRICS.md)",
    )
    monitor: str = Field("map_at_r", description="the metric that picks the best checkpoint")
    zero_shot: bool | Literal["auto"] = Field(
        "auto",
        description="before the first epoch, score the backbone's pooled features (no neck) on the "
        "validation split as metrics.csv's epoch 0, the baseline fine-tuning must beat; auto: when the "
        "backbone starts from weights (model.pretrained or model.weights_path)",
    )

    def zero_shot_enabled(self, model: ModelConfig) -> bool:
        """Whether `zero_shot` asks for the zero-shot row with this model (auto: pretrained weights)."""
        if self.zero_shot == "auto":
            return model.pretrained or model.weights_path is not None
        return self.zero_shot

    @field_validator("metrics")
    @classmethod
    def _metrics_are_known(cls, value: list[str]) -> list[str]:
        parse_metrics(value)
        return value

    @field_validator("monitor")
    @classmethod
    def _monitor_is_known(cls, value: str) -> str:
        parse_metric(value)
        return value


class ExperimentConfig(Section):
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
        default_factory=dict,
        description="compare: dotted key -> values; every combination is run, each checked before the "
        "first; a value of loss.name or miner.name replaces that whole block (no arguments carried over)",
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
