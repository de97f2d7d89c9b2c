"""The one user-facing error type.

Anything a user can cause (a bad flag, a bad file, a missing model) raises `PrefloopError`;
the CLI prints its one-line message and exits with `exit_code` (2). Bugs stay ordinary
exceptions so they keep their tracebacks.
"""

from __future__ import annotations


class PrefloopError(Exception):
    """A user mistake or an unusable input, with where it was found."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.row = row
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        one_line = " ".join(self.message.split())
        return f"{', '.join(where)}: {one_line}" if where else one_line
