"""Shared fixtures: tiny image folders and CSVs made on the fly, quick configs, forked processes (alone or
several `embedlab` commands at once), and the deployment of the serving tests (one tiny trained run, its
gallery index, a server process on a free port, hostile image bytes: a decompression bomb, a truncated
JPEG)."""

from __future__ import annotations

import colorsys
import csv
import io
import multiprocessing
import os
import runpy
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from embedlab.config import ExperimentConfig
from embedlab.index.gallery import GalleryIndex


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


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """XDG_CACHE_HOME in a temporary folder for the whole session (subprocesses inherit it), so the
    decode check's cache (data/check.py) never writes to the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("cache-home")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@dataclass(frozen=True)
class UnreadableData:
    """A CSV over an image folder (4 classes x 5 PNGs) in which one PNG is truncated and one row names a
    file that does not exist."""

    csv: Path
    truncated: Path
    missing: Path


def write_unreadable_data(folder: Path) -> UnreadableData:
    root = write_image_folder(folder / "images", classes=4, per_class=5, size=12)
    truncated = root / "id_0" / "1.png"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    missing = root / "id_1" / "gone.png"
    table = folder / "photos.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label"])
        for image in [*sorted(root.rglob("*.png")), missing]:
            writer.writerow([str(image.relative_to(folder)), image.parent.name])
    return UnreadableData(table, truncated, missing)


@pytest.fixture
def unreadable_data(tmp_path: Path) -> UnreadableData:
    return write_unreadable_data(tmp_path)


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


#: `embedlab ARGV` in a forked process, its output in LOG. Before embedding, every process waits until all
#: PARTIES have reached that point or WAIT_S have passed since the first did. So index writers without a
#: lock held across their read-embed-write all read the index before any writes it (the lost update is
#: certain, not a race), while with the lock the first waits alone (the others are blocked before they
#: read) and the later ones find the time passed.
TOGETHER = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    from embedlab.cli import app
    from embedlab.index import search

    log = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    barrier, embed_images = Path(BARRIER), search.Searcher.embed_images

    def embed_at_the_barrier(self, *args, **kwargs):
        (barrier / NAME).touch()
        while len(arrived := list(barrier.iterdir())) < PARTIES:
            if time.time() > min(path.stat().st_mtime for path in arrived) + WAIT_S:
                break
            time.sleep(0.02)
        return embed_images(self, *args, **kwargs)

    search.Searcher.embed_images = embed_at_the_barrier
    app(ARGV, prog_name="embedlab")
    """
)


@pytest.fixture
def run_together(
    start_forked: Callable[..., multiprocessing.Process], tmp_path: Path
) -> Callable[..., list[str]]:
    """run_together([argv, ...]) runs `embedlab ARGV` for each argv in processes started together (see
    TOGETHER), checks that each exits with 0, and returns their outputs in the same order."""

    def run(argvs: list[list[str]]) -> list[str]:
        folder = Path(tempfile.mkdtemp(prefix="together-", dir=tmp_path))
        script, barrier = folder / "command.py", folder / "barrier"
        script.write_text(TOGETHER)
        barrier.mkdir()
        logs = [folder / f"{n}.log" for n in range(len(argvs))]
        processes = [
            start_forked(
                script,
                ARGV=argv,
                LOG=str(log),
                BARRIER=str(barrier),
                NAME=str(n),
                PARTIES=len(argvs),
                WAIT_S=3.0,
            )
            for n, (argv, log) in enumerate(zip(argvs, logs, strict=True))
        ]
        for process in processes:
            process.join(timeout=180)
            if process.exitcode is None:
                process.kill()
                process.join()
        outputs = [log.read_text() if log.exists() else "" for log in logs]
        assert [p.exitcode for p in processes] == [0] * len(processes), outputs
        return outputs

    return run


@pytest.fixture
def one_faiss_thread() -> Iterator[None]:
    """faiss on one thread: the tests' indexes are tiny, and its OpenMP threads spin against the other
    processes of a busy 2-core machine (training a small PQ took 0.3 s on one thread, 9 s on two)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


EMBEDLAB = shutil.which("embedlab", path=str(Path(sys.executable).parent)) or "embedlab"

#: Identities of the generated gallery: a flat colour each (the model only has to tell colours apart).
GALLERY_COLOURS = {
    "whale_a": (220, 40, 40),
    "whale_b": (40, 200, 60),
    "whale_c": (50, 60, 220),
    "whale_d": (230, 210, 40),
    "whale_e": (200, 60, 210),
    "whale_f": (40, 200, 210),
}
#: Identities that are never in the gallery (calibration and open-set queries).
NEW_COLOURS = {"whale_x": (250, 250, 250), "whale_y": (10, 10, 10)}
IMAGE_SIDE = 24


def write_identities(
    root: Path, colours: dict[str, tuple[int, int, int]], per_identity: int, seed: int
) -> Path:
    """ROOT/<identity>/<n>.png: each identity a colour with pixel noise."""
    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for n in range(per_identity):
            noise = rng.normal(0, 12, (IMAGE_SIDE, IMAGE_SIDE, 3))
            pixels = np.clip(np.array(colour, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{n}.png")
    return root


def blank_png(width: int, height: int, channels: int = 1) -> bytes:
    """A valid 8-bit grey (channels=1) or RGB (3) PNG of width x height zero pixels, made in a fraction
    of a second even at 20,000 x 20,000 (400 MB decoded, a few hundred kilobytes encoded).

    After a full flush zlib forgets its history, so every later block of identical rows compresses to
    the same bytes: one block is compressed and repeated, and the stream's adler32 is computed over the
    real data.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    row = b"\x00" * (width * channels + 1)  # filter byte 0, then one byte per pixel and channel
    rows_per_block = max(1, min(height, (1 << 20) // len(row)))
    block = row * rows_per_block
    blocks, rest = divmod(height, rows_per_block)
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) if blocks > 1 else b""
    last = compressor.compress(row * rest) + compressor.flush()
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * rest, checksum)
    data = first + repeated * (blocks - 1) + last[:-4] + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def make_blank_png():
    return blank_png


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    return blank_png(20_000, 20_000)


@pytest.fixture(scope="session")
def truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """`embedlab serve` as a user starts it (no --host), with a 1 MiB upload limit, on a free port."""

    def __init__(self, index_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as stream:
            self.process = subprocess.Popen(
                [EMBEDLAB, "serve", str(index_dir), "--port", str(self.port), "--max-upload-mb", "1"],
                stdout=stream,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "COLUMNS": "200"},
            )

    def wait_until_ready(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {seconds} s:\n{self.log.read_text()}")
            time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[Path], Server]]:
    """start_server(index_dir) -> a `Server` of its own over index_dir, answering; stopped after the test."""
    started: list[Server] = []

    def start(index_dir: Path) -> Server:
        server = Server(index_dir, tmp_path / f"server-{len(started)}.log")
        started.append(server)
        server.wait_until_ready()
        return server

    yield start
    for server in started:
        server.stop()


HERE = Path(__file__).parent / "serving"
SERVER_WANTED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within tests/serving, the tests that talk to the server run last; the server process starts as
    soon as the index exists (see `deployment`), so it boots while the in-process tests run."""
    positions = [n for n, item in enumerate(items) if item.path.parent == HERE]
    block = [items[n] for n in positions]
    late = [item for item in block if "server" in getattr(item, "fixturenames", ())]
    config.stash[SERVER_WANTED] = bool(late)
    for position, item in zip(positions, [i for i in block if i not in late] + late, strict=True):
        items[position] = item


@dataclass(frozen=True)
class Deployment:
    """A trained run, its gallery folder, an index over it calibrated for the best F1 on a folder of
    known and new identities (and the index as built, in memory), other images of the new identities,
    and the server process (if tests want it)."""

    run_dir: Path
    gallery: Path
    index_dir: Path
    new_identities: Path
    calibration: Path
    built: GalleryIndex
    server: Server | None


@pytest.fixture(scope="session")
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    from embedlab.config import load_config
    from embedlab.pipelines.index import build_gallery_index
    from embedlab.serving.calibrate import calibrate_index
    from embedlab.training.fit import fit

    root = tmp_path_factory.mktemp("deployment")
    gallery = write_identities(root / "gallery", GALLERY_COLOURS, per_identity=6, seed=0)
    new_identities = write_identities(root / "new", NEW_COLOURS, per_identity=3, seed=1)
    # Calibration images: known identities (other photos) and new ones, as a user would collect them.
    calibration = write_identities(root / "calibration", GALLERY_COLOURS, per_identity=2, seed=2)
    write_identities(calibration, NEW_COLOURS, per_identity=2, seed=3)
    cfg, _ = load_config(
        None,
        [
            f"data.dataset={gallery}",
            "data.image_size=16",
            "data.validation.split=classes",
            "data.validation.fraction=0.34",
            "train.epochs=1",
            "train.batch_size=8",
            "model.embedding_dim=16",
            "loss={name: ContrastiveLoss}",
        ],
    )
    run_dir = root / "run"
    fit(cfg, run_dir, progress=False)
    index_dir = root / "index"
    built = build_gallery_index(run_dir, [gallery], index_dir, progress=False)
    calibrate_index(index_dir, queries=[calibration], objective="best_f1", progress=False)
    server = (
        Server(index_dir, root / "server.log") if request.config.stash.get(SERVER_WANTED, False) else None
    )
    try:
        yield Deployment(run_dir, gallery, index_dir, new_identities, calibration, built, server)
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def server(deployment: Deployment) -> Server:
    assert deployment.server is not None, "the collection hook asks for the server when a test uses it"
    deployment.server.wait_until_ready()
    return deployment.server


# Collections to audit, with planted problems or without. An identity is a hue; each of its photos is a
# new layout of discs of grey, black and a darker shade on it (hues are evenly spaced, so identities are
# told apart by colour, which a random backbone sees), drawn larger than the model's input (as photos
# are), so that two photos of one identity differ everywhere while a copy of one photo stays close to it
# even through a random backbone's pooled features.
AUDIT_PHOTO_SIDE = 160
AUDIT_MODEL_SIDE = 48
AUDIT_TRAIN_IDENTITIES = 9
AUDIT_VALIDATION_IDENTITIES = 3
AUDIT_PHOTOS = 6


def audit_photo(identity: int, rng: np.random.Generator) -> np.ndarray:
    hue = identity / (AUDIT_TRAIN_IDENTITIES + AUDIT_VALIDATION_IDENTITIES)
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.9)) * 255
    shades = [colour * 0.5, np.array([235.0, 235.0, 235.0]), np.array([25.0, 25.0, 25.0])]
    y, x = np.mgrid[0:AUDIT_PHOTO_SIDE, 0:AUDIT_PHOTO_SIDE]
    pixels = np.empty((AUDIT_PHOTO_SIDE, AUDIT_PHOTO_SIDE, 3))
    pixels[:] = colour
    for _ in range(5):
        cy, cx = rng.uniform(0, AUDIT_PHOTO_SIDE, 2)
        radius = rng.uniform(0.08, 0.22) * AUDIT_PHOTO_SIDE
        pixels[(y - cy) ** 2 + (x - cx) ** 2 < radius * radius] = shades[rng.integers(3)]
    return np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def resized_reencoded(source: Path, target: Path) -> Path:
    with Image.open(source) as image:
        smaller = image.resize((int(image.width * 0.75), int(image.height * 0.75)), Image.Resampling.BICUBIC)
        smaller.convert("RGB").save(target, format="JPEG", quality=85)
    return target


@dataclass(frozen=True)
class AuditCollection:
    """A CSV (path, label, split) over ROOT/<identity>/<n>.png, and what was planted in it."""

    csv: Path
    root: Path
    planted: dict[str, Path]

    def key(self, name: str) -> str:
        return str(self.planted[name])


def write_audit_collection(folder: Path, *, planted: bool, seed: int = 0) -> AuditCollection:
    rng = np.random.default_rng(seed)
    root = folder / "photos"
    rows: list[tuple[Path, str, str]] = []
    for identity in range(AUDIT_TRAIN_IDENTITIES + AUDIT_VALIDATION_IDENTITIES):
        name = f"id_{identity}"
        (root / name).mkdir(parents=True)
        split = "train" if identity < AUDIT_TRAIN_IDENTITIES else "validation"
        for n in range(AUDIT_PHOTOS):
            path = root / name / f"{n}.png"
            Image.fromarray(audit_photo(identity, rng)).save(path)
            rows.append((path, name, split))
    plants: dict[str, Path] = {}
    if planted:
        # One picture under two identities, saved again so that its bytes differ but not its pixels.
        with Image.open(root / "id_0" / "0.png") as image:
            image.save(root / "id_1" / "copy_of_id_0.png", compress_level=1)
        plants["copy_across_identities"] = root / "id_1" / "copy_of_id_0.png"
        rows.append((plants["copy_across_identities"], "id_1", "train"))
        # A training picture again in the validation split.
        plants["copy_across_splits"] = root / "id_2" / "1.png"
        rows.append((plants["copy_across_splits"], "id_2", "validation"))
        # A photo of id_3 filed under id_4.
        relabelled = root / "id_3" / "2.png"
        rows = [(p, "id_4" if p == relabelled else label, s) for p, label, s in rows]
        plants["relabelled"] = relabelled
        # id_7 is id_6 again: the same source images under a second identity.
        for path, label, split in list(rows):
            if label == "id_6":
                copy = root / "id_7" / f"from_id_6_{path.name}"
                copy.write_bytes(path.read_bytes())
                rows.append((copy, "id_7", split))
        rows = [(p, label, s) for p, label, s in rows if not (label == "id_7" and "from_id_6" not in p.name)]
        # A smaller JPEG of a training photo beside it, and one of a validation photo beside it.
        plants["reencoded"] = resized_reencoded(root / "id_5" / "0.png", root / "id_5" / "0_small.jpg")
        rows.append((plants["reencoded"], "id_5", "train"))
        plants["reencoded_validation"] = resized_reencoded(
            root / "id_10" / "0.png", root / "id_10" / "0_small.jpg"
        )
        rows.append((plants["reencoded_validation"], "id_10", "validation"))
        # A file that does not decode.
        plants["unreadable"] = root / "id_8" / "broken.png"
        plants["unreadable"].write_bytes((root / "id_8" / "0.png").read_bytes()[:200])
        rows.append((plants["unreadable"], "id_8", "train"))
    table = folder / "photos.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split"])
        for path, label, split in rows:
            writer.writerow([str(path.relative_to(folder)), label, split])
    return AuditCollection(table, root, {name: path.relative_to(folder) for name, path in plants.items()})


@pytest.fixture(scope="session")
def audit_config() -> ExperimentConfig:
    """A random small backbone at 48 px with average pooling: what the photos' colours tell apart."""
    return ExperimentConfig.model_validate(
        {"data": {"image_size": AUDIT_MODEL_SIDE}, "model": {"backbone": "small_resnet", "pooling": "avg"}}
    )


@pytest.fixture(scope="session")
def audit_collection() -> Callable[..., AuditCollection]:
    """write_audit_collection(folder, planted=...), for fixtures of any scope."""
    return write_audit_collection
