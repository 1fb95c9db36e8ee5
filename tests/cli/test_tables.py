"""cli/tables.py: a table is printed in full, as rich where the terminal is wide enough, else Markdown."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from embedlab.cli import tables


def _table(columns: int) -> Table:
    table = Table(title="scores")
    table.add_column("combination")
    for index in range(columns):
        table.add_column(f"metric_{index}", justify="right")
    table.add_row("loss.name=CosFaceLoss | margin", *[f"0.{index:04d}" for index in range(columns)])
    return table


@pytest.mark.parametrize("terminal", [True, False])
def test_a_table_too_wide_for_80_columns_is_markdown_in_full(
    terminal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(tables, "console", Console(file=out, width=80, force_terminal=terminal))
    tables.print_table(_table(8))
    lines = out.getvalue().splitlines()
    assert lines[0] == "scores"
    values = " | ".join(f"0.{i:04d}" for i in range(8))
    assert f"| loss.name=CosFaceLoss \\| margin | {values} |" in lines
    assert "…" not in out.getvalue()


def test_a_table_that_fits_a_terminal_is_drawn_by_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(tables, "console", Console(file=out, width=80, force_terminal=True))
    tables.print_table(_table(1))
    assert "┃" in out.getvalue() and "0.0000" in out.getvalue() and "…" not in out.getvalue()
