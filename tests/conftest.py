"""Shared fixtures: tiny image folders and CSVs made on the fly, and quick configs."""

from __future__ import annotations

import csv
import multiprocessing
import runpy
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_image_folder(root: Path, classes: int = 4, per_class: int = 5, size: int = 12) -> Path:
    """ROOT/<label>/<n>.png: each class a distinct colour with noise, so classes are separable."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"id_{label}"
        folder.mkdir(parents=True)
        base = np.array([(label * 60) % 256, (label * 110) % 256, (label * 170) % 256], dtype=np.float64)
        for n in range(per_class):
            pixels = np.clip(base + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{n}.png")
    return root


@pytest.fixture(scope="session")
def make_image_folder() -> Callable[..., Path]:
    """write_image_folder, for fixtures of a wider scope than image_folder's."""
    return write_image_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def image_csv(tmp_path: Path) -> Path:
    root = write_image_folder(tmp_path / "images")
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split", "group", "camera"])
        for n, image in enumerate(sorted(root.rglob("*.png"))):
            label = image.parent.name
            split = "validation" if label in ("id_2", "id_3") else "train"
            writer.writerow([str(image.relative_to(tmp_path)), label, split, f"g{n // 2}", "left"])
    return path


@pytest.fixture
def quick_digits() -> list[str]:
    """`--set` overrides for a run of a few steps on scikit-learn's digits."""
    return list(QUICK_DIGITS)


QUICK_DIGITS = [
    "data.dataset=digits",
    "data.validation.split=images",
    "train.epochs=1",
    "train.batch_size=32",
    "train.max_steps_per_epoch=4",
    "model.embedding_dim=16",
    "loss={name: ContrastiveLoss}",
]


#: Debian's Chromium drives the browser tests through Playwright; nothing downloads a browser build.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's Browser), closed after the module; skips without Chromium.

    Module scope, not session: Playwright's sync API refuses a second driver while one is running.
    """
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (make browser)")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


#: What the forked processes of `start_forked` import once, in their server.
FORK_SERVER_PRELOAD = ["torch", "lightning", "embedlab.cli", "embedlab.training.fit"]


@pytest.fixture(scope="session")
def start_forked() -> Callable[..., multiprocessing.Process]:
    """start_forked(script, **variables) runs a Python file as __main__ in a new process, with the
    variables set, and returns the started process.

    The processes are forked from multiprocessing's fork server, which imports torch, Lightning and
    embedlab once: a process costs its own work, not the ten seconds those imports take here. They are
    real processes: tests kill them (or they kill themselves) with SIGKILL, or run several as the
    processes of one DDP group.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_SERVER_PRELOAD)

    def start(script: Path, **variables: Any) -> multiprocessing.Process:
        process = context.Process(
            target=runpy.run_path,
            args=(str(script),),
            kwargs={"init_globals": variables, "run_name": "__main__"},
        )
        process.start()
        return process

    return start


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """faiss on one thread: the tests' indexes are tiny, and its OpenMP threads spin against the other
    processes of a busy 2-core machine (training a small PQ took 0.3 s on one thread, 9 s on two)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
