"""Terminal output: rich tables, whole when they go into a file or a pipe."""

from __future__ import annotations


def print_table(table, console=None) -> None:
    """On a terminal, rich fits the table to the screen. Into a file or a pipe there is no screen to fit (rich would
    assume 80 columns and cut names short), so the table prints at its natural width."""
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)
