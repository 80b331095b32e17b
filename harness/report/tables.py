"""Markdown tables, shared by every report section."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """Markdown table lines; `align` is one char per column: l (default) or r."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    spec = [("---:" if (align[i:i + 1] == "r") else "---") for i in range(len(headers))]
    return ["| " + " | ".join(headers) + " |", "| " + " | ".join(spec) + " |",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]
