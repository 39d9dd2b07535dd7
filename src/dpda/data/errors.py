"""Errors of the data layer: they name the file, the line and what was expected."""

from __future__ import annotations

from pathlib import Path

from dpda.errors import DpdaError


class ProtocolError(DpdaError, ValueError):
    """A protocol file that cannot be read as its format says."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


class AudioValidationError(DpdaError, ValueError):
    """Audio files that failed validation, all of them reported together."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        super().__init__(f"{len(problems)} audio file(s) failed validation:\n{listing}")
        self.problems = problems
