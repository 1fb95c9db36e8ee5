"""How a command fails: one sentence on stderr's console, exit status 2, no traceback."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape

from embedlab.config import ConfigError

console = Console()

#: The failures a user can fix (bad paths, mismatched model and index, unreadable images, ...).
USER_ERRORS = (ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError)


def fail(message: str) -> typer.Exit:
    """Print `message` as an error and return the exit to raise (status 2)."""
    # Escaped: a message quoting a path or an error with [brackets] is text, not markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=2)


def launch_rank() -> int:
    """This process's rank as a launcher (torchrun, SLURM, jsrun) set it before Lightning is imported."""
    ranks = (os.environ.get(key) for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"))
    return int(next((value for value in ranks if value is not None), 0))


def fail_once(message: str, rank: int) -> typer.Exit:
    """Under DDP every process stops with the same error; the process of rank 0 says so."""
    return fail(message) if rank == 0 else typer.Exit(code=2)
