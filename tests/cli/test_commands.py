"""The `embedlab` console script, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

EMBEDLAB = shutil.which("embedlab", path=str(Path(sys.executable).parent)) or "embedlab"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([EMBEDLAB, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture
def digits_config(tmp_path: Path, quick_digits: list[str]) -> Path:
    from embedlab.config import load_config

    _, raw = load_config(None, quick_digits)
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "compare", "demo"):
        assert command in result.stdout


def test_train_then_evaluate_the_run(tmp_path: Path, digits_config: Path) -> None:
    out = tmp_path / "run"
    trained = run("train", str(digits_config), "--out", str(out), "--set", "train.seed=3")
    assert trained.returncode == 0, trained.stderr
    assert "precision_at_1" in trained.stdout and (out / "summary.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 3
    evaluated = run("evaluate", str(out), "--json", "--metrics", "precision_at_1,map_at_r")
    assert evaluated.returncode == 0, evaluated.stderr
    payload = json.loads(evaluated.stdout)
    assert set(payload) >= {"precision_at_1", "map_at_r", "n_queries", "n_queries_without_positives"}
    summary = json.loads((out / "summary.json").read_text())
    assert payload["precision_at_1"] == pytest.approx(summary["best_metrics"]["precision_at_1"], abs=1e-6)

    steps = run(
        "evaluate", str(out), "--json", "--metrics", "precision_at_1,map_at_r",
        "--tta", "flip", "--qe", "2,3", "--rerank", "5,2,0.3",
    )  # fmt: skip
    assert steps.returncode == 0, steps.stderr
    rows = json.loads(steps.stdout)
    assert [row["step"] for row in rows] == [
        "model",
        "tta flip",
        "qe k=2 alpha=3",
        "rerank k1=5 k2=2 lambda=0.3",
    ]
    assert rows[0]["precision_at_1"] == payload["precision_at_1"]
    assert all(0.0 <= row["map_at_r"] <= 1.0 and row["scoring_seconds"] > 0 for row in rows)
    table = run("evaluate", str(out), "--dba", "1,1", "--metrics", "precision_at_1")
    assert table.returncode == 0, table.stderr
    assert "+ dba k=1 alpha=1" in table.stdout and "scoring s" in table.stdout


def test_unknown_config_key_is_a_clear_error(digits_config: Path, tmp_path: Path) -> None:
    result = run("train", str(digits_config), "--out", str(tmp_path / "x"), "--set", "model.embeding_dim=3")
    assert result.returncode == 2
    assert "unknown key 'model.embeding_dim'" in result.stdout and "embedding_dim" in result.stdout


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  epocs: 3\n")
    probe = (
        "import sys\n"
        "from embedlab.cli import app\n"
        "try:\n"
        f"    app(['train', {str(config)!r}], prog_name='embedlab')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "unknown key 'train.epocs'" in result.stdout
    assert result.stdout.strip().endswith("exit 2 False False"), result.stdout


def test_evaluate_embeddings_from_npy_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "q.npy", rng.normal(size=(30, 4)).astype(np.float32))
    np.save(tmp_path / "ql.npy", np.arange(30) % 3)
    result = run(
        "evaluate",
        "--query-embeddings",
        str(tmp_path / "q.npy"),
        "--query-labels",
        str(tmp_path / "ql.npy"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["n_queries"] == 30 and 0.0 <= payload["map_at_r"] <= 1.0
    files = ["--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "ql.npy")]
    steps = run("evaluate", *files, "--whiten", "3", "--qe", "1,0", "--json")
    assert steps.returncode == 0, steps.stderr
    rows = json.loads(steps.stdout)
    assert [row["step"] for row in rows] == ["embeddings", "whiten 3 on gallery", "qe k=1 alpha=0"]
    assert rows[0]["map_at_r"] == payload["map_at_r"]


def test_label_column_is_refused_naming_the_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "q.npy", np.zeros((5, 4), dtype=np.float32))
    np.save(tmp_path / "ql.npy", np.zeros((5, 1), dtype=np.int64))
    result = run(
        "evaluate", "--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "ql.npy")
    )
    assert result.returncode == 2
    assert "(5, 1)" in result.stdout


def test_compare_writes_the_leaderboard(tmp_path: Path, digits_config: Path) -> None:
    out = tmp_path / "cmp"
    result = run(
        "compare",
        str(digits_config),
        "--out",
        str(out),
        "--grid",
        "loss.name=ContrastiveLoss,MultiSimilarityLoss",
    )
    assert result.returncode == 0, result.stderr
    markdown = (out / "leaderboard.md").read_text()
    assert "loss.name=ContrastiveLoss" in markdown and "loss.name=MultiSimilarityLoss" in markdown
    assert "leaderboard" in result.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--qe", "2"], "--qe takes 2 comma-separated numbers, got '2'"),
        (["--rerank", "20,6"], "--rerank takes 3 comma-separated numbers"),
        (["--dba", "1.5,3"], "--dba: K must be a whole number"),
        (["--tta", "flip"], "--ensemble and --tta embed images with trained models: give a RUN_DIR"),
        (["--whiten", "2", "--whiten-on", "train"], "needs a run folder"),
        (["--whiten-on", "test", "--whiten", "2"], "--whiten-on must be gallery or train"),
    ],
)
def test_evaluate_step_options_are_checked(tmp_path: Path, options: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from embedlab.cli import app

    np.save(tmp_path / "q.npy", np.eye(4, dtype=np.float32))
    np.save(tmp_path / "ql.npy", np.array([0, 0, 1, 1]))
    files = ["--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "ql.npy")]
    result = CliRunner().invoke(app, ["evaluate", *files, *options], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert message in result.output


def test_a_weights_file_that_runs_code_exits_2_in_one_sentence(tmp_path: Path, digits_config: Path) -> None:
    import pickle

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(os.system))  # a global weights_only=True refuses to look up
    result = run(
        "train", str(digits_config), "--out", str(tmp_path / "x"), "--set", f"model.weights_path={evil}"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "evil.pth cannot be loaded safely" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_train_with_a_weights_path_prints_what_it_loaded_in_one_line(
    tmp_path: Path, digits_config: Path
) -> None:
    import torch

    from embedlab.models.backbones import create_backbone

    weights = tmp_path / "a folder with a long name for the line to pass 80 columns" / "small_cnn.pth"
    weights.parent.mkdir()
    state = create_backbone("small_cnn", in_chans=1).model.state_dict()
    torch.save(state, weights)
    n = sum(not key.endswith("num_batches_tracked") for key in state)
    # model.pretrained stays set: the local file replaces the hub (small_cnn has no hub weights at all)
    sets = ["--set", f"model.weights_path={weights}", "--set", "model.pretrained=true"]
    result = run("train", str(digits_config), "--out", str(tmp_path / "run"), *sets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines().count(f"loaded {n} of {n} tensors by name from {weights}") == 1


def test_train_on_unreadable_files_exits_2_in_one_sentence_or_skips_them(
    tmp_path: Path, unreadable_data
) -> None:
    quick = [
        "data.image_size=12",
        "train.batch_size=4",
        "train.max_steps_per_epoch=2",
        "model.embedding_dim=8",
    ]
    config = tmp_path / "photos.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": str(unreadable_data.csv)}}))
    options = [item for key in quick for item in ("--set", key)]
    refused = run("train", str(config), "--out", str(tmp_path / "refused"), *options)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    said = " ".join(refused.stdout.split())  # rich wraps long lines
    assert "2 of 21 image files cannot be used" in said and "data.skip_unreadable: true" in said
    assert unreadable_data.truncated.name in said and unreadable_data.missing.name in said

    out = tmp_path / "skipped"
    skipped = run("train", str(config), "--out", str(out), *options, "--set", "data.skip_unreadable=true")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert "left out 2 unreadable image file(s)" in " ".join(skipped.stdout.split())
    assert json.loads((out / "summary.json").read_text())["skipped_unreadable"] == 2


def test_version_is_printed_without_importing_torch() -> None:
    from embedlab import __version__

    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"embedlab {__version__}\n"
    probe = (
        "import sys\n"
        "from embedlab.cli import app\n"
        "try:\n"
        "    app(['--version'])\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines()[-1] == "False False"


def test_train_prints_the_data_summary_warns_of_a_degenerate_evaluation_and_counts_what_is_scored(
    tmp_path: Path, make_image_folder
) -> None:
    import csv

    # The CSV's split holds out one identity; its roles make 2 queries search 3 gallery items, all
    # positives: every metric is 1.0 whatever the model does.
    root = make_image_folder(tmp_path / "images", classes=3, per_class=5, size=12)
    table = tmp_path / "photos.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split", "is_query", "is_gallery"])
        for image in sorted(root.rglob("*.png")):
            held_out = image.parent.name == "id_2"
            query = held_out and int(image.stem) < 2
            writer.writerow(
                [
                    image,
                    image.parent.name,
                    "validation" if held_out else "train",
                    int(query),
                    int(held_out and not query),
                ]
            )
    config = tmp_path / "photos.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": str(table)}}))
    quick = [
        "data.image_size=12",
        "train.batch_size=4",
        "train.max_steps_per_epoch=2",
        "model.embedding_dim=8",
    ]
    out = tmp_path / "run"
    trained = run(
        "train", str(config), "--out", str(out), *[item for key in quick for item in ("--set", key)]
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    lines = trained.stdout.splitlines()
    assert "train: 10 images of 2 identities" in lines
    assert (
        "validation: 2 queries, 3 gallery items (the validation set itself), 1 identity among the queries, "
        "0 queries without positives"
    ) in lines
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert any("every validation query is of one identity" in w for w in warnings), lines
    assert any("2 of 2 validation queries search a gallery in which every item" in w for w in warnings), lines
    assert lines.index("train: 10 images of 2 identities") < min(
        n for n, line in enumerate(lines) if line.startswith("trained in")
    )
    split = json.loads((out / "split.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert (split["query_images"], split["gallery_images"], split["validation_images"]) == (2, 3, 5)
    assert summary["n_queries"] == split["query_images"]


def _probe(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a Python process and print its exit status and whether torch / Lightning loaded."""
    probe = (
        "import sys\n"
        "from embedlab.cli import app\n"
        "try:\n"
        f"    app({args!r}, prog_name='embedlab')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_bare_overrides_after_the_config_are_read_as_set_ones(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n")
    bare = _probe(["train", str(config), "train.epochs=2", "model.embeding_dim=3"])
    with_set = _probe(["train", str(config), "--set", "train.epochs=2", "--set", "model.embeding_dim=3"])
    assert "unknown key 'model.embeding_dim'" in bare.stdout
    assert bare.stdout == with_set.stdout and bare.stdout.strip().endswith("exit 2 False False")
    compared = _probe(["compare", str(config), "--out", str(tmp_path / "cmp"), "train.epoch=2"])
    assert "unknown key 'train.epoch'" in compared.stdout, compared.stdout


def test_a_bare_argument_without_equals_names_key_value(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n")
    result = _probe(["train", str(config), "other.yaml"])
    assert "unexpected argument 'other.yaml'" in result.stdout and "KEY=VALUE" in result.stdout
    assert result.stdout.strip().endswith("exit 2 False False")


def test_init_writes_a_starter_config_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    from embedlab.config import load_config, packaged_configs

    starters = (("folder", "image_folder.yaml"), ("csv", "image_csv.yaml"), ("photos", "photos.yaml"))
    for name, packaged in starters:
        written = run("init", name, cwd=tmp_path)
        assert written.returncode == 0, written.stdout + written.stderr
        assert (tmp_path / f"{name}.yaml").read_text() == packaged_configs()[packaged].read_text()
    cfg, _ = load_config(tmp_path / "csv.yaml")
    assert cfg.data.dataset == "photos.csv" and cfg.data.validation.split == "auto"
    (tmp_path / "folder.yaml").write_text("# mine\n")
    again = run("init", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stdout
    assert (tmp_path / "folder.yaml").read_text() == "# mine\n"
    forced = run("init", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and (tmp_path / "folder.yaml").read_text() != "# mine\n"


def test_a_grid_that_cannot_parse_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text("grid:\n  train.monitor: [map_at_r, map_at_rr]\n")
    out = tmp_path / "cmp"
    result = _probe(["compare", str(config), "--out", str(out)])
    assert "map_at_rr" in result.stdout, result.stdout
    assert result.stdout.strip().endswith("exit 2 False False") and not out.exists()


def test_evaluating_npy_files_imports_neither_torch_nor_lightning(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "q.npy", rng.normal(size=(30, 4)).astype(np.float32))
    np.save(tmp_path / "ql.npy", np.arange(30) % 3)
    files = ["--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "ql.npy")]
    for steps in ([], ["--whiten", "3", "--qe", "1,0"]):
        result = _probe(["evaluate", *files, *steps, "--json"])
        assert "map_at_r" in result.stdout, result.stdout + result.stderr
        assert result.stdout.strip().endswith("exit 0 False False"), result.stdout


def test_evaluate_npy_files_on_device_auto_imports_no_torch_and_cuda_without_gpu_is_refused(
    tmp_path: Path,
) -> None:
    from embedlab.retrieval.devices import nvidia_device_present

    rng = np.random.default_rng(0)
    np.save(tmp_path / "q.npy", rng.normal(size=(40, 4)).astype(np.float32))
    np.save(tmp_path / "ql.npy", np.arange(40) % 4)
    files = ["--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "ql.npy")]
    if nvidia_device_present():
        pytest.skip("auto imports torch, and finds a GPU, where an NVIDIA device exists")
    auto = _probe(["evaluate", *files, "--device", "auto", "--json"])
    assert auto.stdout.strip().endswith("exit 0 False False"), auto.stdout + auto.stderr
    assert '"precision_at_1"' in auto.stdout
    refused = run("evaluate", *files, "--device", "cuda")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stdout.split())
    assert "device='cuda' asks for a GPU, but torch sees none" in said, said
    assert "Traceback" not in refused.stdout + refused.stderr
