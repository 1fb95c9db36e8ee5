"""`fit`: one training run from a config to a run folder (see run_dir.py for what it holds).

One process, or several on Lightning's DDP strategy (`devices` per node on `num_nodes` nodes, or as
torchrun started them), on the CPU or on CUDA GPUs (training/hardware.py). Process 0 alone prepares and
writes the run folder; every process trains on its slice of each global batch (data/loaders.py) and the
metrics are those of the whole validation set.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from embedlab.atomic import remove_stale_temporaries
from embedlab.config import ExperimentConfig
from embedlab.data.augmentation import build_augmentation
from embedlab.data.loaders import resolve_num_workers, train_batches
from embedlab.data.splits import DataSplits, prepare_data
from embedlab.models.embedder import Embedder, build_embedder
from embedlab.models.weights import load_torch_file
from embedlab.models.zero_shot import zero_shot_embedder
from embedlab.training.averaging import ExponentialMovingAverage
from embedlab.training.callbacks import RetrievalValidation
from embedlab.training.checkpoint_io import AtomicCheckpointIO
from embedlab.training.distributed import resolve_layout
from embedlab.training.hardware import compile_embedder, ddp_strategy, resolve_hardware
from embedlab.training.history import read_history, training_rows, truncate_history
from embedlab.training.loggers import run_loggers
from embedlab.training.module import EmbeddingModule, NonFiniteLossError, NonFiniteWeightsError
from embedlab.training.objective import build_objective
from embedlab.training.optimizers import check_optimizer_name
from embedlab.training.progress import EpochBar, EpochLines
from embedlab.training.run_dir import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    MODEL_FILE,
    SNAPSHOT_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    atomic_write_text,
    write_json,
)
from embedlab.training.validation import check_validation_has_positives, summarize_validation
from embedlab.training.zero_shot import history_summary
from embedlab.versions import package_versions

#: Files left out as unreadable (data.skip_unreadable) that summary.json names; all are counted.
SHOWN_SKIPPED = 20

#: The data summary and the warnings printed before the first step go here (`logging`).
LOGGER = logging.getLogger(__name__)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a message comes (pytest and notebooks replace it), plain
    messages as they are, warnings after "warning: "."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def _show_messages() -> None:
    """Print embedlab's messages on stdout, unless the program configured logging itself (as Lightning
    does for its own logger)."""
    package = logging.getLogger("embedlab")
    if package.handlers or logging.getLogger().handlers:
        return
    package.addHandler(_StdoutHandler())
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)


def test_time_preprocessing(embedder: Embedder) -> dict[str, Any]:
    """How an image becomes the model's input at evaluation and search time, as model.json records it
    (the index's manifest holds the same): decoded with Pillow, the whole image resized to a square (no
    crop), then scaled to [0, 1] and normalised; training augmentation never applies."""
    preprocess = embedder.preprocess
    return {
        "decode": "pil",
        "channels": preprocess.channels,
        "resize": f"whole image to {preprocess.size}x{preprocess.size}, bilinear",
        "crop": None,
        "mean": [round(float(v), 6) for v in preprocess.mean.tolist()],
        "std": [round(float(v), 6) for v in preprocess.std.tolist()],
    }


def _log_data_summary(data: DataSplits) -> dict[str, int]:
    """Log the training and validation counts and a warning for each degenerate part of the
    evaluation; returns the counts that are scored."""
    summary = summarize_validation(data.query, data.gallery)
    identities = "identity" if data.num_classes == 1 else "identities"
    LOGGER.info(f"train: {len(data.train)} images of {data.num_classes} {identities}")
    for line in summary.lines():
        LOGGER.info(line)
    for note in [*data.notes, *summary.warnings()]:
        LOGGER.warning(note)
    return {"query_images": summary.queries, "gallery_images": summary.gallery}


@dataclass
class RunResult:
    """The run folder and its summary.json; under DDP only process 0 has a summary (the others get an
    empty one and `main_process` False)."""

    run_dir: Path
    summary: dict[str, Any]
    main_process: bool = True

    @property
    def metrics(self) -> dict[str, float]:
        return self.summary["metrics"]


def _prepare_run_dir(out_dir: Path, resume: bool, force: bool) -> Path | None:
    """Check the folder; returns the checkpoint to resume from, if any."""
    last = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: {last} does not exist; start the run without --resume")
        # What a process killed mid-write left beside the checkpoints it did not replace.
        remove_stale_temporaries(last.parent)
        return last
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise FileExistsError(
                f"run folder {out_dir} already exists and is not empty; pass --resume to continue it, "
                "--force to overwrite it, or choose another --out"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return None


def _last_good_checkpoint(out_dir: Path) -> str:
    last = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not last.is_file():
        return "No checkpoint had been written yet; fix the cause (a lower optimizer.lr, say) and start again"
    # Lightning records the 0-based index of the epoch the checkpoint ended
    completed = int(load_torch_file(last)["epoch"]) + 1
    return (
        f"{last} (after {completed} completed epoch{'s' if completed != 1 else ''}) is the last good "
        "checkpoint and was kept; fix the cause (a lower optimizer.lr, say) and continue with --resume"
    )


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*TensorBoard.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # epochs between validations (train.eval_every_n_epochs) have no monitored metric, by design
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")


def fit(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    devices: int | None = None,
    num_nodes: int | None = None,
) -> RunResult:
    """Train the configured model, evaluate it after every epoch (and, with train.zero_shot, its
    backbone's pooled features before the first: metrics.csv's epoch 0), and write the run folder.

    devices / num_nodes: processes per node and nodes (default: train.devices, else what torchrun
    started, else one); more than one process trains with DDP (NCCL between GPUs, gloo on the CPU).
    `train.batch_size` stays the batch of one step over all processes.
    """
    out_dir = Path(out_dir)
    layout = resolve_layout(devices if devices is not None else cfg.train.devices, num_nodes)
    # Before the run folder: a GPU the machine lacks, or an optimizer timm lacks, leaves nothing behind.
    hardware = resolve_hardware(cfg.train, layout.devices)
    check_optimizer_name(cfg.optimizer.name)
    main_process = layout.rank == 0
    if main_process:
        resume_from = _prepare_run_dir(out_dir, resume, force)
    else:
        resume_from = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT if resume else None
    _quiet_lightning()
    started = time.perf_counter()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)

    resumed_epoch = None if resume_from is None else int(load_torch_file(resume_from)["epoch"])
    # Image files are decoded once here, before anything is built: a broken file stops the run now.
    data = prepare_data(cfg.data, progress=progress and main_process)
    check_validation_has_positives(data.query, data.gallery)
    if main_process:
        _show_messages()
        # split.json counts what every epoch scores
        data.record.update(_log_data_summary(data))
    embedder = build_embedder(cfg.model, data.channels, data.image_size)
    if cfg.train.channels_last:
        embedder = embedder.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        compile_embedder(embedder, cfg.train.compile_backend)
    objective = build_objective(
        cfg,
        num_classes=data.num_classes,
        embedding_size=cfg.model.embedding_dim,
        class_counts=data.class_counts,
    )
    module = EmbeddingModule(
        embedder,
        objective,
        cfg.optimizer,
        cfg.scheduler,
        seed=cfg.train.seed,
        freeze_backbone_epochs=cfg.train.freeze_backbone_epochs,
    )

    workers = resolve_num_workers(cfg.data.num_workers, feeds_cuda=hardware.on_cuda)
    # Built before the run's files are written: a batch the data cannot fill leaves the folder empty.
    loader = train_batches(
        data.train,
        cfg.train.batch_size,
        cfg.train.seed,
        cfg.data.m_per_class,
        workers,
        sampler=cfg.data.sampler,
        min_images_per_identity=cfg.data.min_images_per_identity,
        rank=layout.rank,
        world_size=layout.world_size,
        feeds_cuda=hardware.on_cuda,
        augmentation=build_augmentation(cfg.data.augment, data.image_size),
    )

    history = out_dir / HISTORY_FILE
    if main_process:
        atomic_write_text(out_dir / CONFIG_FILE, cfg.to_yaml())
        write_json(out_dir / SPLIT_FILE, data.record)
        write_json(
            out_dir / MODEL_FILE,
            {
                "channels": data.channels,
                "image_size": data.image_size,
                "embedding_dim": cfg.model.embedding_dim,
                "preprocessing": test_time_preprocessing(embedder),
            },
        )
        if resumed_epoch is not None:
            # last.ckpt ended Lightning's epoch `resumed_epoch`: metrics.csv's epoch resumed_epoch + 1
            truncate_history(history, resumed_epoch + 1)

    if resumed_epoch is not None:
        # On a resume Lightning iterates the loader before it calls set_epoch, and a loader with workers
        # draws its first batches at once: without this, the resumed epoch would replay epoch 0's
        # batches. last.ckpt is written at the end of an epoch, so the run goes on with the next one.
        loader.sampler.set_epoch(resumed_epoch + 1)
    averaging = None if cfg.train.ema_decay is None else ExponentialMovingAverage(cfg.train.ema_decay)
    validation = RetrievalValidation(
        data.query,
        data.gallery,
        cfg.train.metrics,
        cfg.train.eval_batch_size,
        history,
        workers,
        cfg.train.eval_every_n_epochs,
        snapshot_path=out_dir / SNAPSHOT_FILE,
        averaging=averaging,
        precision=cfg.train.precision,
        # before the first epoch only: a resumed run keeps the zero-shot row it wrote then
        zero_shot=(
            zero_shot_embedder(embedder)
            if resumed_epoch is None and cfg.train.zero_shot_enabled(cfg.model)
            else None
        ),
    )
    best_checkpoint = ModelCheckpoint(
        dirpath=out_dir / CHECKPOINT_DIR,
        filename=BEST_CHECKPOINT.removesuffix(".ckpt"),
        monitor=f"val/{cfg.train.monitor}",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # A checkpoint of its own for the latest epoch: Lightning's save_last follows the monitored saves,
    # so it would skip the epochs between validations, which are the ones a killed run resumes from.
    last_checkpoint = ModelCheckpoint(
        dirpath=out_dir / CHECKPOINT_DIR,
        filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        save_top_k=1,
        enable_version_counter=False,
    )
    # A live bar on a terminal; one flushed line per epoch where a bar cannot be drawn (a log, CI).
    live = progress and main_process and sys.stdout.isatty()
    progress_callbacks: list[L.Callback] = [EpochBar()] if live else []
    if progress and not live:
        progress_callbacks.append(EpochLines(validation, cfg.train.monitor))
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=hardware.lightning_accelerator,
        devices=layout.devices,
        num_nodes=layout.num_nodes,
        # The loader already gives each process its slice, hence no distributed sampler.
        strategy=(
            ddp_strategy(hardware, some_parameters_frozen=cfg.train.freeze_backbone_epochs > 0)
            if layout.world_size > 1
            else "auto"
        ),
        use_distributed_sampler=False,
        precision=hardware.precision,
        logger=run_loggers(out_dir, cfg.model_dump(mode="json", exclude={"grid"})),
        callbacks=[
            *([averaging] if averaging is not None else []),
            validation,
            *progress_callbacks,
            best_checkpoint,
            last_checkpoint,
        ],
        plugins=[AtomicCheckpointIO()],
        limit_train_batches=cfg.train.max_steps_per_epoch or 1.0,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        gradient_clip_val=cfg.train.gradient_clip_val,
        gradient_clip_algorithm=cfg.train.gradient_clip_algorithm,
        num_sanity_val_steps=0,
        enable_progress_bar=live,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=resume_from)
    except (NonFiniteLossError, NonFiniteWeightsError) as error:
        raise type(error)(f"{error}. {_last_good_checkpoint(out_dir)}") from None
    if not trainer.is_global_zero:
        return RunResult(run_dir=out_dir, summary={}, main_process=False)

    rows = read_history(history)
    trained = training_rows(rows)
    last = trained[-1] if trained else {}
    summary = {
        # metrics, best_epoch, best_metrics, zero_shot_metrics, warnings
        **history_summary(rows, cfg.train.metrics, cfg.train.monitor),
        "epochs": cfg.train.epochs,
        "n_queries": int(last["n_queries"]) if last else None,
        "n_queries_without_positives": int(last["n_queries_without_positives"]) if last else None,
        "train_seconds": round(validation.train_seconds, 3),
        "images_per_second": round(validation.train_images / max(validation.train_seconds, 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "num_classes": data.num_classes,
        "train_images": len(data.train),
        "skipped_unreadable": len(data.skipped),
        "skipped_unreadable_files": [
            {"path": str(u.path), "reason": u.reason} for u in data.skipped[:SHOWN_SKIPPED]
        ],
        "processes": layout.world_size,
        "accelerator": hardware.accelerator,
        "precision": hardware.precision,
        "versions": package_versions(),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return RunResult(run_dir=out_dir, summary=summary)
