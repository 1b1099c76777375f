"""The data engine's one error type: every rejected input names its file and, where it has one, its row."""

from __future__ import annotations


class DataError(ValueError):
    """An input the data engine refuses, with where it came from."""

    def __init__(self, message: str, *, file: str | None = None, row: int | str | None = None):
        self.file = file
        self.row = row
        where = ""
        if file is not None:
            where = f"{file}"
            if row is not None:
                where += f" (row {row})"
            where += ": "
        super().__init__(where + message)


class ErrorPolicy:
    """``raise`` stops at the first bad input; ``skip`` drops it and counts it (``--on-error``)."""

    def __init__(self, mode: str = "raise"):
        if mode not in ("raise", "skip"):
            raise ValueError(f"on-error must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.skipped: list[str] = []

    def handle(self, error: DataError) -> None:
        """Re-raise under ``raise``; remember the message under ``skip``."""
        if self.mode == "raise":
            raise error
        self.skipped.append(str(error))
