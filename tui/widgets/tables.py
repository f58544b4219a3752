"""Small helpers for tables that are redrawn on every refresh without losing the cursor."""

from __future__ import annotations

from collections.abc import Sequence

from textual.widgets import DataTable

DASH = "-"


def fmt_seconds(seconds: float | None) -> str:
    """``3725`` -> ``1h02m``; ``42.5`` -> ``42s``; None -> ``-``."""
    if seconds is None:
        return DASH
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def fill_table(table: DataTable, rows: Sequence[Sequence[str]], keys: Sequence[str] | None = None) -> None:
    """Replace a table's rows, keeping the cursor on the same row number."""
    row = table.cursor_row
    table.clear()
    for i, values in enumerate(rows):
        table.add_row(*values, key=keys[i] if keys else None)
    if rows and table.cursor_type == "row":
        table.move_cursor(row=min(row, len(rows) - 1))
