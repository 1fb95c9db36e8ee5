"""Atomic file writes: into a temporary file beside the target, flushed to disk, then renamed over it.

A crash or a kill mid-write leaves the previous file in place and whole, never a torn one. The file
gets the mode a plain `open(path, "w")` would give it (0666 less the umask: 0644 under the usual 022),
not the 0600 of the temporary file it was written to.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

TEMPORARY_SUFFIX = ".tmp"


def _file_mode() -> int:
    """0o666 less the process's umask, which can only be read by setting it (and setting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(stream)` on a temporary binary file, then move it to `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    try:
        os.fchmod(descriptor, _file_mode())
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda stream: stream.write(text.encode()))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in `folder` (their targets are
    untouched); returns what was deleted. Call it only when no writer is at work in the folder."""
    removed = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed
