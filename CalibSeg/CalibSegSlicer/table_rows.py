"""Rows of an MRML table node as plain strings (what a page or report shows of it)."""

from __future__ import annotations


def tableRows(tableNode) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of ``tableNode`` (a ``vtkMRMLTableNode``); empty when None."""
    if tableNode is None or tableNode.GetTable() is None:
        return [], []
    table = tableNode.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    header = [column.GetName() or "" for column in columns]
    rows = []
    for r in range(table.GetNumberOfRows()):
        rows.append([table.GetValue(r, c).ToString() for c in range(len(columns))])
    return header, rows
