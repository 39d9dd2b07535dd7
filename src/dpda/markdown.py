"""Markdown tables, the form of every table dpda writes (eval results, seed summaries, the
report, the demo)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table: the header, its rule, one line per row of cells.

    >>> print("\\n".join(table(["aligner", "EER"], [["pcgrad", "6.48%"]])))
    | aligner | EER |
    |---|---|
    | pcgrad | 6.48% |
    """
    lines = [_row(header), "|" + "---|" * len(header)]
    for cells in rows:
        if len(cells) != len(header):
            raise ValueError(f"a row of {len(cells)} cells under a header of {len(header)}: {list(cells)}")
        lines.append(_row(cells))
    return lines


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"
