"""`embed_to_shards` / `embedlab embed`: a folder of images into shards, on one process or two."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.config import load_config
from embedlab.data.sources import read_folder
from embedlab.embeddings.shards import MANIFEST_FILE, EmbeddingShards, shard_path
from embedlab.models.inference import embed
from embedlab.pipelines.embed import embed_to_shards
from embedlab.training.fit import fit
from embedlab.training.run_dir import load_run

CLASSES, PER_CLASS, SIDE = 5, 8, 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, image folder): a tiny model trained one epoch on 5 colours of 8 images each."""
    root = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        folder = root / "images" / f"id_{label}"
        folder.mkdir(parents=True)
        colour = np.array([(label * 60) % 256, (label * 110) % 256, (label * 170) % 256], dtype=np.float64)
        for n in range(PER_CLASS):
            pixels = np.clip(colour + rng.normal(0, 10, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{n}.png")
    cfg, _ = load_config(
        None,
        [
            f"data.dataset={root / 'images'}",
            f"data.image_size={SIDE}",
            "data.validation.split=images",
            "data.validation.fraction=0.5",
            "train.batch_size=8",
            "model.embedding_dim=16",
            "loss={name: ContrastiveLoss}",
        ],
    )
    fit(cfg, root / "run", progress=False)
    return root / "run", root / "images"


def _expected(run_dir: Path, images: Path) -> np.ndarray:
    run = load_run(run_dir)
    files = read_folder(images, run.embedder.preprocess.size, run.embedder.preprocess.channels).images
    return embed(run.embedder, files)


def _all_rows(folder: Path) -> np.ndarray:
    return np.concatenate([shard.embeddings for shard in EmbeddingShards(folder)])


def test_every_image_lands_once_in_id_order_with_its_label(trained, tmp_path) -> None:
    run_dir, images = trained
    result = embed_to_shards(run_dir, images, tmp_path / "out", shard_size=12, progress=False)
    shards = result.shards
    assert shards is not None and result.embedded_shards == 4 and result.main_process
    assert [len(shard.ids) for shard in shards] == [12, 12, 12, 4]
    np.testing.assert_allclose(_all_rows(tmp_path / "out"), _expected(run_dir, images), atol=1e-6)
    items = list(shards.items())
    names = shards.manifest.label_names
    assert [names[code] for code in shards.labels()] == [item["label"] for item in items]
    assert items[0]["path"] == str((images / "id_0" / "0.png").resolve())
    assert shards.manifest.model["run_dir"] == str(run_dir.resolve())


def test_resume_embeds_only_the_missing_shards(trained, tmp_path) -> None:
    run_dir, images = trained
    out = tmp_path / "out"
    embed_to_shards(run_dir, images, out, shard_size=12, progress=False)
    # As a kill leaves it: the last shards not written, no manifest.
    shard_path(out, 1).unlink()
    shard_path(out, 3).unlink()
    (out / MANIFEST_FILE).unlink()
    with pytest.raises(FileExistsError, match="unfinished folder; pass --resume"):
        embed_to_shards(run_dir, images, out, shard_size=12, progress=False)
    with pytest.raises(ValueError, match="another model, source or shard size"):
        embed_to_shards(run_dir, images, out, shard_size=10, resume=True, progress=False)
    resumed = embed_to_shards(run_dir, images, out, shard_size=12, resume=True, progress=False)
    assert resumed.embedded_shards == 2
    np.testing.assert_allclose(_all_rows(out), _expected(run_dir, images), atol=1e-6)


def test_a_folder_is_overwritten_only_with_force_and_only_if_it_holds_shards(trained, tmp_path) -> None:
    run_dir, images = trained
    out = tmp_path / "out"
    embed_to_shards(run_dir, images, out, shard_size=40, progress=False)
    with pytest.raises(FileExistsError, match="already holds a finished folder"):
        embed_to_shards(run_dir, images, out, progress=False)
    with pytest.raises(FileExistsError, match="already complete"):
        embed_to_shards(run_dir, images, out, shard_size=40, resume=True, progress=False)
    again = embed_to_shards(run_dir, images, out, shard_size=7, force=True, progress=False)
    assert again.shards is not None and again.shards.manifest.n_shards == 6
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an embedding folder"):
        embed_to_shards(run_dir, images, other, force=True, progress=False)
    assert (other / "todo.txt").read_text() == "keep me"


def test_the_command_reports_the_shards(trained, tmp_path) -> None:
    run_dir, images = trained
    out = tmp_path / "out"
    args = ["embed", str(run_dir), "--images", str(images), "--out", str(out), "--shard-size", "16"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "40 images, 3 shard(s) of up to 16 (16-d" in result.output
    refused = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "--resume" in refused.output


# Runs embed_to_shards as process RANK of 2, with the environment torchrun gives its processes.
TORCHRUN_PROCESS = textwrap.dedent(
    """
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(PORT), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        RANK=str(RANK), LOCAL_RANK=str(RANK), GROUP_RANK="0", TORCHELASTIC_RUN_ID="test",
    )
    import torch

    torch.set_num_threads(1)
    from embedlab.pipelines.embed import embed_to_shards

    embed_to_shards(RUN_DIR, IMAGES, OUT, shard_size=SHARD_SIZE, progress=False)
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("shard_size", [12, 64], ids=["4 shards", "1 shard: the second process idles"])
def test_two_processes_write_the_shards_one_process_writes(
    trained, tmp_path, start_forked, shard_size
) -> None:
    run_dir, images = trained
    script = tmp_path / "process.py"
    script.write_text(TORCHRUN_PROCESS)
    port = _free_port()
    processes = [
        start_forked(
            script,
            RANK=rank,
            PORT=port,
            RUN_DIR=str(run_dir),
            IMAGES=str(images),
            OUT=str(tmp_path / "out"),
            SHARD_SIZE=shard_size,
        )
        for rank in range(2)
    ]
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    np.testing.assert_allclose(_all_rows(tmp_path / "out"), _expected(run_dir, images), atol=1e-6)


def test_an_error_quoting_brackets_is_printed_as_text(tmp_path) -> None:
    missing = tmp_path / "[run]"
    args = ["embed", str(missing), "--images", str(tmp_path), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and f"run folder {missing} does not exist" in result.output
