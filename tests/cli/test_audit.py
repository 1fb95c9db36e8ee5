"""`embedlab audit` as a user runs it: the command's output, exit status 2 on bad input, and the page in a
real headless browser, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

EMBEDLAB = shutil.which("embedlab", path=str(Path(sys.executable).parent)) or "embedlab"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([EMBEDLAB, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory, audit_collection, audit_config
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("cli_audit")
    collection = audit_collection(folder, planted=True)
    config = folder / "audit.yaml"
    config.write_text(yaml.safe_dump(audit_config.model_dump(include={"data", "model"}, mode="json")))
    out = folder / "audit"
    return out, run("audit", str(collection.csv), "--out", str(out), "--config", str(config))


def test_the_command_prints_the_threshold_what_it_found_and_the_metrics(audited) -> None:
    out, result = audited
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "near duplicates: similarity at least" in text and "re-encoded copies" in text
    assert "found: 8 exact duplicate groups, 2 near duplicate groups, 2 leaks, 7 label conflicts" in text
    assert "random weights" in text  # the note on what a random backbone's findings are worth
    assert "without the leaking items" in text
    assert {p.name for p in out.iterdir()} >= {"audit.html", "audit.json", "leaks.csv", "label_errors.csv"}


def test_bad_input_exits_2_in_one_sentence(tmp_path) -> None:
    lone = tmp_path / "lone" / "whale"
    lone.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(lone / "0.png")
    result = run("audit", str(tmp_path / "lone"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "holds one identity (whale, 1 image)" in result.stdout and "Traceback" not in result.stderr
    missing = run("audit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--set", "a=1")
    assert missing.returncode == 2 and "--set changes a config: give --config too" in missing.stdout
    np.save(tmp_path / "q.npy", np.eye(2, dtype=np.float32))
    np.save(tmp_path / "l.npy", np.array([0, 1]))
    files = ["--query-embeddings", str(tmp_path / "q.npy"), "--query-labels", str(tmp_path / "l.npy")]
    no_run = run("evaluate", *files, "--exclude-audit", str(tmp_path / "leaks.csv"))
    assert (
        no_run.returncode == 2
        and "--exclude-audit names images of a run's data: give RUN_DIR" in no_run.stdout
    )


def test_the_page_opens_offline_in_chromium_with_every_thumbnail(audited, chromium, tmp_path) -> None:
    out, _ = audited
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
    page.goto((out / "audit.html").as_uri())
    widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) > 20 and all(w > 0 for w in widths)
    assert errors == [] and outside == []
    assert page.locator("#exact .group").count() == 8
    assert page.locator("#near .group.leak_query_gallery").count() == 1
    assert page.locator("#merges .group").count() == 1
    assert page.locator("#unreadable tbody tr").count() == 1
    assert page.locator("#metrics tbody tr").count() == 3
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280  # no sideways overflow
