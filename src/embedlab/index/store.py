"""Writing and reading index folders atomically, under a lock on their parent folder.

Every write builds a complete new folder beside the old one (`.INDEX_DIR.incoming`) and swaps it in
with two renames (old -> `.INDEX_DIR.previous`, new -> INDEX_DIR). A writer killed before the swap
leaves the old folder untouched; one killed between the two renames leaves the old folder under its
`.previous` name, and the next load or write puts it back. Writers and loaders of indexes in one parent
folder take an exclusive lock on that folder, so a loader never reads half of one index and half of
another.

That lock covers one load or one write. A read-modify-write (`index add`, `calibrate`) holds a second,
longer lock across the whole of it, `writer_lock`: a flock on the file `.INDEX_DIR.lock` beside the
folder, so that a second writer waits and then reads what the first wrote instead of overwriting it.
It is a separate file because flock belongs to an open file description: the folder lock taken again
inside it, on the folder's own descriptor, does not conflict with it. Taking `writer_lock` twice in one
thread waits forever; the kernel drops it when its process dies, however it dies. Loaders (searches,
the server) never take it, so they are not held up by a writer's embedding.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from embedlab.index.gallery import (
    GalleryIndex,
    GalleryItem,
    configure_search,
)
from embedlab.index.manifest import (
    EMBEDDINGS_FILE,
    ITEMS_FILE,
    MANIFEST_FILE,
    WHITENING_FILE,
    FaissRecord,
    IndexManifest,
)
from embedlab.retrieval.faiss_index import (
    combine,
    parts,
)
from embedlab.retrieval.whitening import PCAWhitening


def _sibling(index_dir: Path, role: Literal["incoming", "previous", "lock"]) -> Path:
    return index_dir.parent / f".{index_dir.name}.{role}"


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on a folder (flock on its descriptor), released on exit."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def writer_lock(index_dir: str | Path) -> Iterator[None]:
    """Hold the writers' lock of index_dir (see the module docstring) until the block exits, however."""
    index_dir = Path(index_dir).absolute()
    if not index_dir.parent.is_dir():
        raise FileNotFoundError(f"index folder {index_dir} does not exist")
    # The lock file stays: deleting it would let a writer lock a file that a newer one no longer opens.
    descriptor = os.open(_sibling(index_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _recover(index_dir: Path) -> None:
    """Finish what an interrupted writer left: put the previous index back if it was moved aside but
    the new one never arrived, and delete leftovers. Call with the folder lock held."""
    previous, incoming = _sibling(index_dir, "previous"), _sibling(index_dir, "incoming")
    if previous.exists():
        if index_dir.exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, index_dir)
    if incoming.exists():
        shutil.rmtree(incoming)


def _write_files(index: GalleryIndex, folder: Path) -> None:

    with (folder / EMBEDDINGS_FILE).open("wb") as stream:
        np.save(stream, np.ascontiguousarray(index.embeddings, dtype=np.float32))
        stream.flush()
        os.fsync(stream.fileno())
    with (folder / ITEMS_FILE).open("w") as stream:
        for item in index.items:
            stream.write(json.dumps({"path": item.path, "label": item.label, "extra": item.extra}) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    write_faiss_files(index.faiss_index, index.manifest.faiss, folder)
    if index.whitening is not None:
        index.whitening.save(folder / WHITENING_FILE)
    write_manifest_last(index.manifest, folder)


def write_faiss_files(faiss_index: Any, record: FaissRecord, folder: Path) -> None:
    """The index's shards to their files (record.files()), each flushed to disk."""
    import faiss

    shards = parts(faiss_index)
    if len(shards) != record.shards:
        raise ValueError(f"the faiss index has {len(shards)} shards, its record says {record.shards}")
    for name, shard in zip(record.files(), shards, strict=True):
        faiss.write_index(shard, str(folder / name))
        _fsync_path(folder / name)


def write_streamed_rows(
    folder: Path, n_rows: int, dim: int, blocks: Iterable[np.ndarray], items_file: Path
) -> None:
    """embeddings.npy written block by block (rows in id order, never all in memory) and items.jsonl
    copied from `items_file` (lines of the same form), each flushed to disk.

    Plain writes after the .npy header, not a memory map: every page written through a map stays in
    the process's resident memory until it is unmapped (half a GiB for a million 128-d rows).
    """
    written = 0
    with (folder / EMBEDDINGS_FILE).open("wb") as stream:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(stream, {**header, "shape": (n_rows, dim)})
        for block in blocks:
            if block.ndim != 2 or block.shape[1] != dim:
                raise ValueError(f"a block of rows has shape {block.shape}, expected (n, {dim})")
            np.ascontiguousarray(block, dtype=np.float32).tofile(stream)
            written += len(block)
        stream.flush()
        os.fsync(stream.fileno())
    if written != n_rows:
        raise ValueError(f"the blocks held {written} rows, {n_rows} were expected")
    shutil.copyfile(items_file, folder / ITEMS_FILE)
    _fsync_path(folder / ITEMS_FILE)


def write_manifest_last(manifest: IndexManifest, folder: Path) -> None:
    """The manifest, flushed, and the folder's entries: a folder with a manifest has everything the
    manifest describes."""
    with (folder / MANIFEST_FILE).open("w") as stream:
        stream.write(manifest.model_dump_json(indent=2) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    _fsync_path(folder)


def _swap_in(incoming: Path, index_dir: Path) -> None:
    """Move the finished `incoming` folder to index_dir, replacing what is there."""
    previous = _sibling(index_dir, "previous")
    if index_dir.exists():
        os.replace(index_dir, previous)
        os.replace(incoming, index_dir)
        _fsync_path(index_dir.parent)
        shutil.rmtree(previous)
    else:
        os.replace(incoming, index_dir)
        _fsync_path(index_dir.parent)


def folder_stamp(index_dir: str | Path) -> tuple[int, int, int, int] | None:
    """What every write changes, read with one stat: the device, inode, mtime and size of the manifest
    (each write swaps in a new folder with a new manifest file); None while there is no manifest."""
    try:
        info = os.stat(Path(index_dir) / MANIFEST_FILE)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def is_index_dir(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def check_writable(index_dir: Path, replace: bool) -> None:
    """Raise FileExistsError if writing index_dir would replace a folder it must not replace."""
    if not index_dir.exists():
        return
    if not is_index_dir(index_dir):
        raise FileExistsError(
            f"{index_dir} exists and is not an embedlab index (no {MANIFEST_FILE}); choose another folder"
        )
    if not replace:
        raise FileExistsError(
            f"index {index_dir} already exists; pass --force to replace it, or use `embedlab index add` "
            "to add images to it"
        )


def write_index(index: GalleryIndex, index_dir: str | Path, *, replace: bool = False) -> None:
    """Write `index` to index_dir as one atomic folder swap (see the module docstring).

    An existing index is replaced only with replace=True; a folder that is not an index never is.
    """
    write_index_folder(index_dir, lambda folder: _write_files(index, folder), replace=replace)


def write_index_folder(index_dir: str | Path, fill: Callable[[Path], None], *, replace: bool = False) -> None:
    """Let `fill(folder)` write an index's files into a new folder, then swap it in for index_dir
    atomically (see the module docstring); fill writes the manifest last and flushes what it writes."""
    index_dir = Path(index_dir).absolute()
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(index_dir.parent):
        _recover(index_dir)
        check_writable(index_dir, replace)
        incoming = _sibling(index_dir, "incoming")
        incoming.mkdir()
        try:
            fill(incoming)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        _swap_in(incoming, index_dir)


def _read_items(path: Path) -> list[GalleryItem]:
    items = []
    with path.open() as stream:
        for number, line in enumerate(stream, start=1):
            try:
                row = json.loads(line)
                items.append(GalleryItem(path=row["path"], label=row["label"], extra=row.get("extra", {})))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}, line {number}: not a gallery item ({error})") from None
    return items


def read_manifest(index_dir: Path) -> IndexManifest:
    path = index_dir / MANIFEST_FILE
    try:
        return IndexManifest.model_validate_json(path.read_text())
    except ValidationError as error:
        raise ValueError(f"{path} is not a valid index manifest: {error}") from None


def load_index(index_dir: str | Path) -> GalleryIndex:
    """Read an index folder; its files are checked against each other and against the manifest."""
    import faiss

    index_dir = Path(index_dir).absolute()
    if not index_dir.parent.is_dir():
        raise FileNotFoundError(f"index folder {index_dir} does not exist")
    with _folder_lock(index_dir.parent):
        _recover(index_dir)
        if not is_index_dir(index_dir):
            raise FileNotFoundError(
                f"{index_dir} is not an embedlab index (no {MANIFEST_FILE}); "
                "build one with `embedlab index build RUN_DIR --gallery FOLDER --out INDEX_DIR`"
            )
        manifest = read_manifest(index_dir)
        items = _read_items(index_dir / ITEMS_FILE)
        # Memory-mapped: the server keeps the rows for rebuilding only, search goes through faiss.
        embeddings = np.load(index_dir / EMBEDDINGS_FILE, mmap_mode="r")
        missing = [name for name in manifest.faiss.files() if not (index_dir / name).is_file()]
        if missing:
            raise ValueError(f"index {index_dir} is inconsistent: {', '.join(missing)} missing; rebuild it")
        faiss_index = combine([faiss.read_index(str(index_dir / name)) for name in manifest.faiss.files()])
    dim = manifest.vector_dim
    checks = {
        f"{ITEMS_FILE} rows": len(items),
        f"{EMBEDDINGS_FILE} rows": embeddings.shape[0],
        f"{'+'.join(manifest.faiss.files())} vectors": int(faiss_index.ntotal),
    }
    wrong = {name: count for name, count in checks.items() if count != manifest.size}
    if wrong or embeddings.shape[1:] != (dim,) or faiss_index.d != dim:
        raise ValueError(
            f"index {index_dir} is inconsistent: the manifest says {manifest.size} items of size {dim}, "
            f"but {', '.join(f'{k}: {v}' for k, v in checks.items())}, {EMBEDDINGS_FILE} shape "
            f"{embeddings.shape}, faiss dimension {faiss_index.d}; rebuild it"
        )
    whitening = None
    if manifest.postprocessing.whitening_dim is not None:
        whitening = PCAWhitening.load(index_dir / WHITENING_FILE)
        if whitening.output_dim != dim:
            raise ValueError(
                f"index {index_dir} is inconsistent: {WHITENING_FILE} whitens to {whitening.output_dim} "
                f"dimensions, the manifest says {dim}; rebuild it"
            )
    configure_search(faiss_index, manifest.faiss)
    return GalleryIndex(manifest, items, embeddings, faiss_index, whitening)
