"""Tables printed by more than one command, never cut short.

On a terminal wide enough, a rich table; otherwise (stdout a file or a pipe, or a table wider than the
terminal) a Markdown table with every value in full, which a log keeps and a Markdown viewer renders.
"""

from __future__ import annotations

from rich.measure import Measurement
from rich.table import Table

from embedlab.cli.errors import console

#: Wider than any table: the width at which a table's natural (unwrapped) width is measured.
_UNBOUNDED = 100_000


def markdown_table(table: Table) -> str:
    """The table's title (when it has one) and its cells as a Markdown table, `|` escaped."""
    columns = [[str(cell) for cell in column.cells] for column in table.columns]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [f"{table.title}", ""] if table.title else []
    lines.append(line([str(column.header) for column in table.columns]))
    lines.append("|" + "---|" * len(table.columns))
    lines.extend(line(list(row)) for row in zip(*columns, strict=True))
    return "\n".join(lines)


def print_table(table: Table) -> None:
    """Print `table` in full: rich on a terminal where it fits unwrapped, else Markdown."""
    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    if console.is_terminal and natural <= console.width:
        console.print(table)
    else:
        console.print(markdown_table(table), markup=False, highlight=False, soft_wrap=True)


def print_metrics(metrics: dict[str, float], title: str, zero_shot: dict[str, float] | None = None) -> None:
    """A two-column table of metric names and values (4 decimals); with `zero_shot`, a third column of
    the values before training (`-` for a metric it lacks)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if zero_shot is not None:
        table.add_column("zero-shot", justify="right")
    for name, value in metrics.items():
        cells = [name, f"{value:.4f}"]
        if zero_shot is not None:
            cells.append(f"{zero_shot[name]:.4f}" if name in zero_shot else "-")
        table.add_row(*cells)
    print_table(table)
