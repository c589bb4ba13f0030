"""The lab's one error, and how the lab runs a short command: failing with that error."""

from __future__ import annotations

from picluster import proc

__all__ = ["LabError", "run"]


class LabError(RuntimeError):
    """The lab cannot do what was asked; `code` is the exit status the CLI uses."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def run(*argv: str, stdin: str | None = None) -> str:
    """picluster.proc.run, whose CommandError (a failed or missing program) becomes a
    LabError with the same message."""
    try:
        return proc.run(*argv, stdin=stdin)
    except proc.CommandError as error:
        raise LabError(str(error)) from None
