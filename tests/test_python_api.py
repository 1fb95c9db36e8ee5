"""The Python API of `import embedlab` (embedlab.pipelines.api): docs/python-api.md's example executed
as written, the import that stays free of torch, and the forms the API takes its inputs in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_the_documented_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 4, f"{DOC} should hold the worked example in ```python blocks"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "python_api_doc"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)
    assert (tmp_path / "runs" / "digits" / "summary.json").is_file()
    assert (tmp_path / "photos-index").is_dir()


def test_import_embedlab_exposes_the_api_without_importing_torch() -> None:
    code = (
        "import sys, embedlab\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'imported at once'\n"
        "names = {'train', 'load', 'evaluate', 'Index', 'Model', 'Run'}\n"
        "assert names <= set(dir(embedlab)) and names <= set(embedlab.__all__)\n"
        "assert callable(embedlab.train) and embedlab.Index.build and embedlab.__version__\n"
        "try:\n    embedlab.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_an_unknown_override_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys, embedlab\n"
        "from embedlab.config import ConfigError\n"
        "try:\n"
        f"    embedlab.train({{'data': {{'dataset': 'digits'}}}}, out={str(tmp_path / 'run')!r},\n"
        "                   train__epoch=1)\n"
        "except ConfigError as error:\n"
        "    assert \"Did you mean 'epochs'\" in str(error), error\n"
        "else:\n"
        "    raise SystemExit('no ConfigError')\n"
        "assert 'torch' not in sys.modules, 'torch imported before the config was checked'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert not (tmp_path / "run").exists()


def test_overrides_and_packaged_config_names() -> None:
    from embedlab.config import ExperimentConfig
    from embedlab.pipelines.api import _config_of

    cfg, path = _config_of("image_folder", {"model__embedding_dim": 24, "loss": {"name": "CircleLoss"}})
    assert path is not None and path.name == "image_folder.yaml"
    assert cfg.model.embedding_dim == 24 and cfg.losses()[0].name == "CircleLoss"
    again, _ = _config_of(cfg, {"train__epochs": 3})
    assert isinstance(again, ExperimentConfig) and again.train.epochs == 3
    assert again.model.embedding_dim == 24
    with pytest.raises(FileNotFoundError, match="packaged configs"):
        _config_of("no_such_config", {})


def test_images_in_every_form_become_the_same_pixels(tmp_path: Path) -> None:
    from embedlab.pipelines.api import _batches

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (10, 10), dtype=np.uint8)
    colour = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(grey).save(tmp_path / "a" / "0.png")
    Image.fromarray(colour).save(tmp_path / "a" / "1.png")
    forms = [
        [grey, colour],
        [Image.fromarray(grey), Image.fromarray(colour)],
        [str(tmp_path / "a" / "0.png"), tmp_path / "a" / "1.png"],
        tmp_path / "a",
    ]
    batches = [np.concatenate(list(_batches(form, 6, 3))) for form in forms]
    for batch in batches:
        assert batch.shape == (2, 3, 6, 6) and batch.dtype == np.uint8
        np.testing.assert_array_equal(batch, batches[0])
    stack = np.concatenate(list(_batches(np.stack([colour, colour]), 6, 1)))
    assert stack.shape == (2, 1, 6, 6)
    with pytest.raises(TypeError, match="uint8"):
        list(_batches(grey.astype(np.float32), 6, 1))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        list(_batches(tmp_path / "missing.png", 6, 1))
