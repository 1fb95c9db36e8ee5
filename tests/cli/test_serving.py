"""The serving commands, parsed and run in-process (the server process is tested in test_app.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from embedlab.cli import app


def invoke(*args: str | Path) -> tuple[int, str]:
    """Exit code and the output with line wrapping undone (rich wraps at the terminal width)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def test_index_build_then_add_then_refuse_to_overwrite(deployment, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    code, out = invoke(
        "index", "build", deployment.run_dir, "--gallery", deployment.gallery, "--out", index_dir
    )
    assert code == 0, out
    assert "indexed 36 images of 6 identities" in out and "flat index, 16-d embeddings" in out
    code, out = invoke(
        "index", "add", index_dir, *sorted((deployment.new_identities / "whale_x").glob("*.png"))
    )
    assert code == 0 and "added 3 images" in out and "holds 39" in out
    code, out = invoke(
        "index", "build", deployment.run_dir, "--gallery", deployment.gallery, "--out", index_dir
    )
    assert code == 2 and "already exists; pass --force" in out


def test_index_build_of_a_chosen_kind(deployment, tmp_path: Path) -> None:
    code, out = invoke(
        "index",
        "build",
        deployment.run_dir,
        "--gallery",
        deployment.gallery,
        "--out",
        tmp_path / "i",
        "--kind",
        "ivf",
    )
    assert code == 0 and "ivf index" in out
    code, out = invoke(
        "index",
        "build",
        deployment.run_dir,
        "--gallery",
        deployment.gallery,
        "--out",
        tmp_path / "j",
        "--kind",
        "pq",
    )
    assert code == 2 and "'pq' is not one of" in out


def test_search_json_has_one_object_per_query(deployment) -> None:
    known = deployment.gallery / "whale_f" / "5.png"
    new = deployment.new_identities / "whale_y" / "2.png"
    result = CliRunner().invoke(
        app, ["search", str(deployment.index_dir), str(known), str(new), "-k", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.output.splitlines())
    assert first["query"] == str(known) and len(first["results"]) == 4
    assert set(first["results"][0]) == {"id", "label", "path", "score", "extra"}
    assert first["results"][0]["label"] == "whale_f" and first["new_identity"] is False
    assert second["new_identity"] is True


def test_search_prints_a_table_with_the_decision(deployment) -> None:
    code, out = invoke("search", deployment.index_dir, deployment.gallery / "whale_a" / "1.png", "-k", "2")
    assert code == 0 and "known identity: whale_a" in out and "1.0000" in out


def test_search_errors_name_the_file_or_the_model(deployment, tmp_path: Path) -> None:
    code, out = invoke("search", deployment.index_dir, tmp_path / "gone.jpg")
    assert code == 2 and "gone.jpg does not exist" in out
    code, out = invoke("search", tmp_path, deployment.gallery / "whale_a" / "1.png")
    assert code == 2 and "is not an embedlab index" in out


def test_search_with_another_model_is_refused(deployment, tmp_path: Path) -> None:
    other = Path(shutil.copytree(deployment.run_dir, tmp_path / "retrained"))
    checkpoint = torch.load(other / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["state_dict"]["embedder.neck.norm.bias"] += 1.0
    torch.save(checkpoint, other / "checkpoints" / "best.ckpt")
    code, out = invoke(
        "search", deployment.index_dir, deployment.gallery / "whale_a" / "1.png", "--run", other
    )
    assert code == 2 and "sha256" in out and "retrained or replaced" in out


def test_calibrate_reports_the_operating_point(deployment, tmp_path: Path) -> None:
    index_dir = Path(shutil.copytree(deployment.index_dir, tmp_path / "index"))
    code, out = invoke("calibrate", index_dir, "--target-fmr", "0.05")
    assert code == 0, out
    for words in ("false-match rate <= 0.05", "threshold", "true-match rate", "12 / 12", "stored in"):
        assert words in out
    code, out = invoke("calibrate", index_dir, "--queries", deployment.calibration, "--best-f1")
    assert code == 0 and "best known-vs-new F1" in out and "12 / 16" in out


def test_export_prints_the_check(deployment, tmp_path: Path) -> None:
    code, out = invoke("export", deployment.run_dir, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, out
    assert "max abs difference onnxruntime vs torch" in out and "(tolerance 0.0001)" in out
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--decode-budget-megapixels", "32"], "decode budget (32 megapixels) is below the largest image"),
        (["--allow-origin", "localhost:3000"], "--allow-origin 'localhost:3000' is not an origin"),
        (["--allow-host", "http://photos.lan"], "--allow-host 'http://photos.lan' is not a host name"),
    ],
)
def test_serve_refuses_bad_limits_and_names_before_loading_the_model(
    deployment, options: list[str], words: str
) -> None:
    code, out = invoke("serve", deployment.index_dir, *options)
    assert code == 2 and words in out, out


@pytest.mark.parametrize("command", ["search", "index build", "index add", "embed", "serve"])
def test_every_command_that_embeds_refuses_a_gpu_it_does_not_have(
    command: str, deployment, tmp_path: Path
) -> None:
    image = deployment.gallery / "whale_a" / "1.png"
    arguments = {
        "search": [deployment.index_dir, image],
        "index build": [deployment.run_dir, "--gallery", deployment.gallery, "--out", tmp_path / "i"],
        "index add": [deployment.index_dir, image],
        "embed": [deployment.run_dir, "--images", deployment.gallery, "--out", tmp_path / "e"],
        "serve": [deployment.index_dir, "--port", "0"],
    }[command]
    code, out = invoke(*command.split(), *arguments, "--device", "cuda")
    assert code == 2, out
    assert "--device cuda, but torch" in out and "use --device auto or cpu" in out
    assert not (tmp_path / "i").exists() and not (tmp_path / "e").exists()
