"""Tables printed by more than one command."""

from __future__ import annotations

from rich.table import Table

from embedlab.cli.errors import console


def print_metrics(metrics: dict[str, float], title: str) -> None:
    """A two-column table of metric names and values (4 decimals)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
