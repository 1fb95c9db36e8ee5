"""Each image file of a collection decoded once before training, in loader workers, cached by mtime."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL
import torch
from rich.progress import Progress
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from embedlab.atomic import atomic_write_text
from embedlab.data.images import ImageFiles, decode_file

#: Bump when the cache's layout or the meaning of an entry changes; an older file is then ignored.
CACHE_FORMAT = 1
#: Files decoded per loader item: large enough to amortise a worker's round trip, small enough for
#: a progress bar that moves.
FILES_PER_BATCH = 32
#: Unreadable files listed by name in an error; the rest are counted.
SHOWN = 20

#: One cache entry: [size in bytes, mtime in ns, None when the file decodes, else why it does not].
Entry = list[Any]


@dataclass(frozen=True)
class UnreadableFile:
    """A file of the collection (at `position`) that is missing or does not decode, and why."""

    position: int
    path: Path
    reason: str

    def describe(self) -> str:
        return f"{self.path} {self.reason}"


@dataclass(frozen=True)
class DecodeCheck:
    """What a check found: files decoded this time, files answered from the cache, unreadable files
    (in collection order)."""

    decoded: int
    cached: int
    unreadable: list[UnreadableFile]


def cache_folder() -> Path:
    """`$XDG_CACHE_HOME/embedlab/decode-check` (`~/.cache/...` when the variable is unset or relative)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "embedlab" / "decode-check"


def cache_file(collection: str) -> Path:
    """The cache of one collection: a JSON file named by the hash of the collection's key."""
    return cache_folder() / f"{hashlib.sha256(collection.encode()).hexdigest()[:24]}.json"


def decode_error(path: Path, image_size: int, channels: int) -> str | None:
    """None when the file decodes as training decodes it (`decode_file`), else why not (no path)."""
    try:
        decode_file(path, image_size, channels)
    except FileNotFoundError:
        return "does not exist"
    except Exception as error:
        # Pillow's plugins raise many types on corrupt files (OSError, SyntaxError, EOFError,
        # struct.error, DecompressionBombError, ...); each means the same here: not usable.
        return f"cannot be read as an image: {error or type(error).__name__}"
    return None


class _Decodes(Dataset[list[tuple[int, str | None]]]):
    """Item = a list of positions; answer = (position, decode_error) for each, so workers never raise."""

    def __init__(self, paths: Sequence[Path], image_size: int, channels: int) -> None:
        self.paths = paths
        self.image_size = image_size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, positions: list[int]) -> list[tuple[int, str | None]]:
        return [(p, decode_error(self.paths[p], self.image_size, self.channels)) for p in positions]


def _as_is(batch: list[tuple[int, str | None]]) -> list[tuple[int, str | None]]:
    return batch


def _read_cache(path: Path) -> dict[str, Entry]:
    """The cached entries, or none when the file is absent, unreadable, or from another format or
    Pillow version (a newer Pillow may decode what an older one refused)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(stored, dict)
        or stored.get("format") != CACHE_FORMAT
        or stored.get("pillow") != PIL.__version__
    ):
        return {}
    files = stored.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(path: Path, collection: str, entries: dict[str, Entry]) -> None:
    text = json.dumps(
        {"format": CACHE_FORMAT, "pillow": PIL.__version__, "collection": collection, "files": entries}
    )
    # The cache only saves time: a read-only or full disk must not stop the run.
    with contextlib.suppress(OSError):
        atomic_write_text(path, text)


def check_files(
    images: ImageFiles, collection: str, *, num_workers: int = 0, progress: bool = False
) -> DecodeCheck:
    """Decode every file of `images` once, in a DataLoader of `num_workers` processes (0: in this one).

    The cache (`cache_file(collection)`) maps each file's resolved path to its size, mtime_ns and
    result; a file whose size and mtime_ns are unchanged is answered from it without being opened, so a
    rerun over unchanged files decodes nothing and a touched file is decoded again. A missing file is
    reported without a decode (and without an entry). The cache keeps the entries of this collection's
    current files only, and is replaced atomically.
    """
    path = cache_file(collection)
    known = _read_cache(path)
    entries: dict[str, Entry] = {}
    reasons: dict[int, str] = {}
    pending: list[tuple[int, str, Entry]] = []  # (position, resolved path, [size, mtime_ns])
    cached = 0
    for position, file in enumerate(images.paths):
        resolved = str(Path(file).resolve())
        try:
            # Before any decode: a file rewritten while it is decoded gets a new mtime, so it is
            # checked again next time instead of being remembered with its old result.
            status = os.stat(resolved)
        except FileNotFoundError:
            reasons[position] = "does not exist"
            continue
        except OSError as error:
            reasons[position] = f"cannot be read: {error.strerror or error}"
            continue
        stamp: Entry = [status.st_size, status.st_mtime_ns]
        entry = known.get(resolved)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp:
            entries[resolved] = entry
            cached += 1
            if entry[2] is not None:
                reasons[position] = str(entry[2])
        else:
            pending.append((position, resolved, stamp))

    if pending:
        dataset = _Decodes([Path(resolved) for _, resolved, _ in pending], images.size, images.num_channels)
        batches = BatchSampler(SequentialSampler(range(len(pending))), FILES_PER_BATCH, drop_last=False)
        loader = DataLoader(
            dataset,
            sampler=batches,
            batch_size=None,
            collate_fn=_as_is,
            num_workers=min(num_workers, len(batches)),
            # A loader draws its workers' seed from this generator, by default from torch's global one:
            # a check that ran (cold cache) or did not (warm) would then change the weights that are
            # initialised after it, and a resumed run would not be the run it resumes.
            generator=torch.Generator(),
        )
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"checking {len(pending)} images of {images.name}", total=len(pending))
            for results in loader:
                for index, reason in results:
                    position, resolved, stamp = pending[index]
                    entries[resolved] = [*stamp, reason]
                    if reason is not None:
                        reasons[position] = reason
                bar.advance(task, len(results))
    if entries != known:
        _write_cache(path, collection, entries)
    unreadable = [UnreadableFile(p, Path(images.paths[p]), reasons[p]) for p in sorted(reasons)]
    return DecodeCheck(decoded=len(pending), cached=cached, unreadable=unreadable)


def unreadable_message(unreadable: Sequence[UnreadableFile], total: int, shown: int = SHOWN) -> str:
    """One sentence: how many of `total` files are unusable, the first `shown` with their reasons, and
    the way on."""
    listed = "; ".join(u.describe() for u in unreadable[:shown])
    more = f"; and {len(unreadable) - shown} more" if len(unreadable) > shown else ""
    return (
        f"{len(unreadable)} of {total} image files cannot be used: {listed}{more}. Replace or remove "
        "them, or set data.skip_unreadable: true to train without them"
    )
