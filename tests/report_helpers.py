"""Helpers for the ``catdog report`` tests: the Markdown tables of a report read back."""

from __future__ import annotations


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table in ``text`` as dicts (header -> cell text)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break  # the end of the first table
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]
    assert set(cells[1][0]) <= {":", "-"}, "second line must be the Markdown separator"
    return [dict(zip(header, row, strict=True)) for row in body]
