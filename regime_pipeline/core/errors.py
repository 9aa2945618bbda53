"""The error raised for bad market data: it names the file, the row and the field."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data.

    :param source: where the data came from (a file path, or an endpoint and symbol)
    :param message: what is wrong
    :param row: 1-based line number in the file (header included) or record index
    :param field: the column at fault
    """

    def __init__(
        self, source: str, message: str, *, row: int | None = None, field: str | None = None
    ) -> None:
        self.source = str(source)
        self.row = row
        self.field = field
        self.message = message
        where = self.source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
