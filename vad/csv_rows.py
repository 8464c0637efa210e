"""CSV rows written batch by batch, byte for byte as ``DataFrame.to_csv(index=False)`` writes them.

pandas writes CSV through Python's ``csv`` module after turning each column into cells; for a few rows its
own set-up costs more than the rows (about 0.3 ms for one row against 0.03 ms here), which the edge loop pays
on every request. :func:`column_cells` does the same conversion for the column types a sample table holds
(numbers, booleans, text, pandas' nullable types) and :class:`CsvRows` writes them with the ``csv`` module;
a column of any other type (dates, categories) is left to pandas. Equality with pandas is tested.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.core.arrays.integer import IntegerDtype

_NULLABLE = (pd.StringDtype, pd.BooleanDtype, IntegerDtype, pd.Float64Dtype)


def column_cells(values: pd.Series | np.ndarray) -> list[object] | None:
    """The cells pandas writes for one column, or None for a column type this module leaves to pandas.

    Args:
        values: A column, or a plain array.

    Returns:
        One value per row (``""`` where pandas writes an empty cell), or None.
    """
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype != np.float64:
        # float32 and float16: pandas writes numpy's shortest form of the value, not the float64 one
        return ["" if cell != cell else str(cell) for cell in np.asarray(values)]
    if (isinstance(dtype, np.dtype) and dtype.kind in "biufOU") or isinstance(dtype, _NULLABLE):
        return ["" if _is_empty(cell) else cell for cell in values.tolist()]
    return None


def _is_empty(cell: object) -> bool:
    return cell is None or cell is pd.NA or (isinstance(cell, float) and cell != cell)


def rows_text(names: Sequence[object], columns: Sequence[Sequence[object]], header: bool) -> str:
    """CSV text of rows given column by column (each column a :func:`column_cells` list).

    Args:
        names: Column names (the header).
        columns: Cells per column, all of one length.
        header: Write the header line first.

    Returns:
        The text, one line per row (newline line ends, as pandas writes them here).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(names)
    writer.writerows(zip(*columns, strict=True))
    return buffer.getvalue()


def frame_text(frame: pd.DataFrame, header: bool) -> str:
    """``frame.to_csv(header=header, index=False)``, faster for the column types :func:`column_cells` knows.

    Args:
        frame: The rows.
        header: Write the header line first.

    Returns:
        The CSV text.
    """
    columns = []
    for position in range(frame.shape[1]):
        cells = column_cells(frame.iloc[:, position])
        if cells is None:
            return frame.to_csv(header=header, index=False)
        columns.append(cells)
    return rows_text(list(frame.columns), columns, header)


class CsvRows:
    """Appends rows to a CSV file: the header with the first rows, then each batch, closed after each write."""

    def __init__(self, path: Path) -> None:
        """Nothing is written until the first rows.

        Args:
            path: The CSV file (replaced by the first write).
        """
        self.path = path
        self.rows = 0

    def append(self, frame: pd.DataFrame) -> None:
        """Write a batch of rows given as a frame.

        Args:
            frame: Rows with the same columns as every other batch.
        """
        self.write_text(frame_text(frame, header=self.rows == 0), len(frame))

    def write_text(self, text: str, rows: int) -> None:
        """Write CSV text made for this file (with the header when it is the first).

        Args:
            text: From :func:`rows_text` or :func:`frame_text`.
            rows: How many rows it holds.
        """
        with self.path.open("w" if self.rows == 0 else "a", encoding="utf-8", newline="") as handle:
            handle.write(text)
        self.rows += rows
