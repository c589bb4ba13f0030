"""Running a short command to completion: one way, with one kind of error.

Long-lived processes (the agent's daemons, the lab's hosts) are started where they are
supervised; this is for the commands whose output or failure the caller needs now.
"""

from __future__ import annotations

import shlex
import subprocess

__all__ = ["CommandError", "run"]


class CommandError(RuntimeError):
    """A command that failed or is not installed; the message quotes its last words."""

    def __init__(self, argv: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.argv = argv


def run(*argv: str, stdin: str | None = None) -> str:
    """Run `argv` with `stdin` (None: no input at all) and return its stdout."""
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                check=False,
                                stdin=subprocess.DEVNULL if stdin is None else None)
    except FileNotFoundError:
        raise CommandError(argv, f"{argv[0]} is not installed") from None
    if result.returncode:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise CommandError(argv, f"`{shlex.join(argv)}` failed: "
                                 f"{why[-1] if why else result.returncode}")
    return result.stdout
