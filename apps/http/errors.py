"""The API's client errors: an HTTP status and one line, answered as ``{"error": ...}``."""

from __future__ import annotations

from alo.errors import one_line


class ApiError(Exception):
    """A client error: its HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(one_line(message))
        self.status = status
