"""End to end: a real Lightning run on scikit-learn's digits, and the run folder it leaves."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
import torch

from embedlab.config import load_config
from embedlab.training.fit import fit
from embedlab.training.run_dir import load_run

DIGITS = [
    "data.dataset=digits",
    "data.validation.split=images",
    "model.embedding_dim=32",
    "train.batch_size=32",
    "optimizer.lr=0.003",
    "loss={name: ArcFaceLoss, margin: 28.6, scale: 32}",
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cfg, _ = load_config(None, [*DIGITS, "train.epochs=2"])
    out = tmp_path_factory.mktemp("runs") / "digits"
    return fit(cfg, out, progress=False)


def test_training_on_digits_retrieves_far_above_chance(digits_run) -> None:
    # ten classes: chance precision_at_1 is about 0.1
    assert digits_run.metrics["precision_at_1"] > 0.85
    assert digits_run.metrics["map_at_r"] > 0.5
    assert all(0.0 <= v <= 1.0 for v in digits_run.metrics.values())


def test_run_folder_holds_config_history_summary_and_checkpoints(digits_run) -> None:
    run_dir = digits_run.run_dir
    for name in ("config.yaml", "split.json", "model.json", "metrics.csv", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not list(run_dir.rglob("*.tmp"))
    with (run_dir / "metrics.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    # epochs trained, from 1; a run from scratch has no zero-shot row (train.zero_shot: auto)
    assert [(int(r["epoch"]), r["stage"]) for r in rows] == [(1, "train"), (2, "train")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["precision_at_1"] == pytest.approx(float(rows[-1]["precision_at_1"]))
    assert summary["images_per_second"] > 0 and summary["train_seconds"] > 0
    assert summary["num_classes"] == 10
    assert summary["best_epoch"] in (1, 2)
    assert (summary["zero_shot_metrics"], summary["warnings"]) == (None, [])


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_embedder(digits_run) -> None:
    checkpoint = torch.load(digits_run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("loss.W") for k in checkpoint["state_dict"])  # ArcFace's class weights are saved
    run = load_run(digits_run.run_dir, "last")
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert run.embedder(images).shape == (3, 32)


def test_existing_run_folder_is_not_overwritten(digits_run) -> None:
    cfg, _ = load_config(None, DIGITS)
    with pytest.raises(FileExistsError, match="--resume.*--force"):
        fit(cfg, digits_run.run_dir, progress=False)


def test_resume_continues_from_the_last_checkpoint(tmp_path) -> None:
    cfg, _ = load_config(None, [*DIGITS, "train.epochs=1", "train.max_steps_per_epoch=5"])
    out = tmp_path / "run"
    fit(cfg, out, progress=False)
    longer, _ = load_config(None, [*DIGITS, "train.epochs=2", "train.max_steps_per_epoch=5"])
    resumed = fit(longer, out, resume=True, progress=False)
    with (out / "metrics.csv").open() as stream:
        epochs = [int(r["epoch"]) for r in csv.DictReader(stream)]
    assert epochs == [1, 2]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert resumed.summary["epochs"] == 2


def test_resume_without_a_checkpoint_is_an_error(tmp_path) -> None:
    cfg, _ = load_config(None, DIGITS)
    with pytest.raises(FileNotFoundError, match="last.ckpt does not exist"):
        fit(cfg, tmp_path / "fresh", resume=True, progress=False)


def test_unknown_loss_argument_fails_before_training(tmp_path) -> None:
    cfg, _ = load_config(None, [*DIGITS, "loss={name: CircleLoss, gama: 80}"])
    with pytest.raises(TypeError, match="does not take 'gama'.*Did you mean 'gamma'"):
        fit(cfg, tmp_path / "run", progress=False)


def test_a_batch_the_identities_cannot_fill_writes_nothing_so_the_same_command_runs_again(tmp_path) -> None:
    # digits' 10 identities held out 20% as open set leave 8 to train on; m = 4 fills 32 with 8 of them
    base = [*DIGITS, "data.validation.split=classes", "data.m_per_class=4", "train.max_steps_per_epoch=1"]
    cfg, _ = load_config(None, [*base, "train.batch_size=64"])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="train.batch_size=32 or lower"):
        fit(cfg, out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    cfg, _ = load_config(None, [*base, "train.epochs=1"])
    fit(cfg, out, progress=False)
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_validation_every_n_epochs_and_always_after_the_last(tmp_path) -> None:
    cfg, _ = load_config(
        None, [*DIGITS, "train.epochs=3", "train.max_steps_per_epoch=3", "train.eval_every_n_epochs=2"]
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    with (tmp_path / "run" / "metrics.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["precision_at_1"] != "" for r in rows] == [False, True, True]
    assert float(rows[0]["train_seconds"]) > 0
    assert result.summary["best_epoch"] in (2, 3)  # the validated epochs
    assert result.metrics["precision_at_1"] == pytest.approx(float(rows[2]["precision_at_1"]))


def test_values_a_loss_logs_reach_the_history(tmp_path) -> None:
    cfg, _ = load_config(
        None,
        [*DIGITS, "train.epochs=1", "train.max_steps_per_epoch=3", "loss={name: AdaCosLoss, scale: dynamic}"],
    )
    fit(cfg, tmp_path / "run", progress=False)
    with (tmp_path / "run" / "metrics.csv").open() as stream:
        [row] = list(csv.DictReader(stream))
    assert float(row["loss/scale"]) > 0


def test_last_checkpoint_is_written_on_epochs_without_validation(tmp_path, monkeypatch) -> None:
    from embedlab.training.callbacks import RetrievalValidation

    seen: list[int] = []
    original = RetrievalValidation.on_train_epoch_start

    def record(self, trainer, pl_module) -> None:
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        if last.is_file():
            seen.append(int(torch.load(last, weights_only=True)["epoch"]))
        original(self, trainer, pl_module)

    monkeypatch.setattr(RetrievalValidation, "on_train_epoch_start", record)
    cfg, _ = load_config(
        None, [*DIGITS, "train.epochs=3", "train.max_steps_per_epoch=2", "train.eval_every_n_epochs=3"]
    )
    fit(cfg, tmp_path / "run", progress=False)
    # resumable from each epoch, though only the last was validated (Lightning's epochs, from 0)
    assert seen == [0, 1]


def test_channels_last_trains_in_that_format_and_reloads_like_any_run(tmp_path) -> None:
    cfg, _ = load_config(
        None, [*DIGITS, "train.epochs=1", "train.max_steps_per_epoch=3", "train.channels_last=true"]
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    kernels = [t for name, t in state.items() if name.startswith("embedder.backbone") and t.ndim == 4]
    # A 3x3 kernel with several input channels has a different layout in the two formats.
    wide = [t for t in kernels if t.shape[1] > 1]
    assert wide and all(t.is_contiguous(memory_format=torch.channels_last) for t in wide)
    assert not any(t.is_contiguous() for t in wide)
    run = load_run(tmp_path / "run", "last")
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert run.embedder(images).shape == (3, 32)
    assert 0.0 <= result.metrics["precision_at_1"] <= 1.0


@pytest.mark.parametrize("gallery", ["train", "validation"])
def test_a_validation_split_without_positives_is_refused_before_the_first_step(
    tmp_path, make_image_folder, monkeypatch, gallery
) -> None:
    from embedlab.training.module import EmbeddingModule

    root = make_image_folder(tmp_path / "images", classes=6, per_class=3, size=12)
    table = tmp_path / "photos.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split"])
        for image in sorted(root.rglob("*.png")):
            # identities 3-5 appear once each in validation: no query has another image of its own
            singleton = image.parent.name in ("id_3", "id_4", "id_5") and image.stem == "0"
            held_out = image.parent.name in ("id_3", "id_4", "id_5")
            if held_out and not singleton:
                continue
            writer.writerow([str(image), image.parent.name, "validation" if singleton else "train"])
    cfg, _ = load_config(
        None,
        [f"data.dataset={table}", f"data.gallery={gallery}", "train.batch_size=4", "model.embedding_dim=8"],
    )
    monkeypatch.setattr(EmbeddingModule, "training_step", lambda *a: pytest.fail("a step ran"))
    with pytest.raises(ValueError, match="no validation query has a positive: each of the 3 queries"):
        fit(cfg, tmp_path / "run", progress=False)


UNREADABLE_RUN = [
    "data.image_size=12",
    "train.batch_size=4",
    "train.max_steps_per_epoch=2",
    "model.embedding_dim=8",
]


def test_unreadable_files_are_refused_together_before_the_first_step(
    tmp_path, unreadable_data, monkeypatch
) -> None:
    from embedlab.training.module import EmbeddingModule

    monkeypatch.setattr(EmbeddingModule, "training_step", lambda *a: pytest.fail("a step ran"))
    cfg, _ = load_config(None, [f"data.dataset={unreadable_data.csv}", *UNREADABLE_RUN])
    with pytest.raises(ValueError, match="2 of 21 image files cannot be used") as raised:
        fit(cfg, tmp_path / "run", progress=False)
    assert str(unreadable_data.truncated) in str(raised.value)
    assert str(unreadable_data.missing) in str(raised.value)
    assert "data.skip_unreadable: true" in str(raised.value)


def test_skip_unreadable_trains_without_them_and_counts_them_in_the_summary(
    tmp_path, unreadable_data
) -> None:
    cfg, _ = load_config(
        None, [f"data.dataset={unreadable_data.csv}", "data.skip_unreadable=true", *UNREADABLE_RUN]
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_unreadable"] == 2
    assert [f["path"] for f in summary["skipped_unreadable_files"]] == [
        str(unreadable_data.truncated),
        str(unreadable_data.missing),
    ]
    assert json.loads((tmp_path / "run" / "split.json").read_text())["skipped_unreadable"] == 2
    assert 0.0 <= result.metrics["precision_at_1"] <= 1.0


def test_the_data_summary_and_the_overrides_of_the_csv_are_logged_before_the_first_step(
    tmp_path, image_csv, monkeypatch, caplog
) -> None:
    import logging

    from embedlab.training.module import EmbeddingModule

    def first_step(*args):
        raise RuntimeError("the first step")

    monkeypatch.setattr(EmbeddingModule, "training_step", first_step)
    cfg, _ = load_config(
        None,
        [
            f"data.dataset={image_csv}",
            "data.validation.split=images",
            "data.validation.fraction=0.6",
            *UNREADABLE_RUN,
        ],
    )
    caplog.set_level(logging.INFO, logger="embedlab")
    with pytest.raises(RuntimeError, match="the first step"):
        fit(cfg, tmp_path / "run", progress=False)
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "embedlab.training.fit"]
    assert logged[0] == (logging.INFO, "train: 8 images of 4 identities")
    assert logged[1][0] == logging.INFO
    # the CSV's groups (pairs of rows) hide some positives, so how many queries lack one is left open
    assert logged[1][1].startswith(
        "validation: 12 queries, 12 gallery items (the validation set itself), 4 identities among the "
        "queries, "
    )
    assert logged[2][0] == logging.WARNING
    assert "data.validation.split=images re-splits" in logged[2][1]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert (split["query_images"], split["gallery_images"]) == (12, 12)


def test_bf16_mixed_precision_trains_end_to_end_and_records_its_precision(tmp_path, monkeypatch) -> None:
    from embedlab.training import callbacks

    validated_in = []

    def recording_embed(*args, precision: str = "32-true", **kwargs):
        validated_in.append(precision)
        return embed(*args, precision=precision, **kwargs)

    embed = callbacks.embed
    monkeypatch.setattr(callbacks, "embed", recording_embed)
    cfg, _ = load_config(
        None, [*DIGITS, "train.epochs=1", "train.max_steps_per_epoch=2", "train.precision=bf16-mixed"]
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    # validation runs outside Lightning's autocast: it embeds under the run's own precision
    assert validated_in and set(validated_in) == {"bf16-mixed"}
    assert (result.summary["precision"], result.summary["accelerator"]) == ("bf16-mixed", "cpu")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # autocast computes in bfloat16, the weights themselves stay float32
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert 0.0 <= result.metrics["precision_at_1"] <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine on which torch sees no CUDA device")
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.accelerator=gpu"], r"train.accelerator=gpu, but torch sees no CUDA device \(torch "),
        (["train.precision=16-mixed"], r"16-mixed .*use train.precision=bf16-mixed or 32-true"),
    ],
)
def test_a_run_the_machine_cannot_do_fails_before_its_folder_is_made(tmp_path, overrides, message) -> None:
    cfg, _ = load_config(None, [*DIGITS, *overrides])
    with pytest.raises(ValueError, match=message):
        fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_compiled_run_on_synthetic_images_loads_into_an_uncompiled_embedder(tmp_path, monkeypatch) -> None:
    from embedlab.training import fit as fit_module
    from embedlab.training.hardware import compile_embedder

    backends: list[str] = []

    def record(embedder, backend: str) -> None:
        backends.append(backend)
        compile_embedder(embedder, backend)

    monkeypatch.setattr(fit_module, "compile_embedder", record)
    cfg, _ = load_config(
        None,
        [
            "data.dataset=synthetic:96:4",
            "data.image_size=8",
            "data.channels=1",
            "data.validation.split=images",
            "model.embedding_dim=16",
            "train.batch_size=16",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            "train.compile=true",
            # a real compile that needs no C++ compiler
            "train.compile_backend=eager",
        ],
    )
    fit(cfg, tmp_path / "run", progress=False)
    assert backends == ["eager"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)
    run = load_run(tmp_path / "run", "last")
    assert getattr(run.embedder, "_compiled_call_impl", None) is None
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert run.embedder(images).shape == (3, 16)


def _as_if_saved_on_a_gpu(checkpoint: Path) -> None:
    """Rewrite a torch.save file so that its tensors name cuda:0 as their device, as a checkpoint written
    by a GPU run does (torch.save records each storage's device; torch memoises the string, so one
    replacement relocates every tensor)."""
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    original = checkpoint.with_suffix(".cpu")
    checkpoint.rename(original)
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(checkpoint, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            payload = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert cpu in payload
                payload = payload.replace(cpu, cuda)
            target.writestr(info, payload)
    original.unlink()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine on which torch sees no CUDA device")
def test_a_checkpoint_saved_on_a_gpu_loads_and_resumes_on_a_cpu_only_machine(tmp_path) -> None:
    cfg, _ = load_config(None, [*DIGITS, "train.epochs=1", "train.max_steps_per_epoch=2"])
    out = tmp_path / "run"
    fit(cfg, out, progress=False)
    last = out / "checkpoints" / "last.ckpt"
    _as_if_saved_on_a_gpu(last)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(last, weights_only=True)  # the file really asks for a GPU
    run = load_run(out, "last")
    assert all(t.device.type == "cpu" for t in run.embedder.state_dict().values())
    assert run.embedder(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)).shape == (2, 32)
    longer, _ = load_config(None, [*DIGITS, "train.epochs=2", "train.max_steps_per_epoch=2"])
    fit(longer, out, resume=True, progress=False)
    assert torch.load(last, weights_only=True)["global_step"] == 4
