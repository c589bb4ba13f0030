"""What can go wrong with git, and which failures are worth another try."""

from __future__ import annotations

import git

__all__ = ["GitError", "RemoteMoved", "last_line", "push_error"]


class GitError(RuntimeError):
    """git failed in a way retrying will not fix (or the deadline passed)."""


class RemoteMoved(Exception):
    """The remote moved under a push or a fetch: fetch and try again."""


def _said(error: git.GitCommandError, stream: str) -> str:
    """What git wrote on `stream` ("stdout" or "stderr"), without GitPython's wrapping
    ("\\n  stderr: '...'")."""
    text = str(getattr(error, stream) or "").strip()
    return text.removeprefix(f"{stream}:").strip().removeprefix("'").removesuffix("'")


def last_line(error: git.GitCommandError) -> str:
    """The last thing git said on stderr."""
    lines = [line.strip() for line in _said(error, "stderr").splitlines() if line.strip()]
    # git's verdict is its last fatal:/error: line; what follows it is boilerplate
    # ("Please make sure you have the correct access rights...").
    verdicts = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (verdicts or lines or [f"git exited with status {error.status}"])[-1]


def push_error(url: str, error: git.GitCommandError) -> RemoteMoved | GitError:
    """What a failed `git push --porcelain` means: `RemoteMoved` when the remote moved,
    else a `GitError`."""
    text = f"{error.stdout}\n{error.stderr}"
    # Only "the remote moved" is worth another try; a hook, a protected branch or
    # missing rights refuse every attempt alike.
    if not any(word in text for word in ("declined", "denied", "permission", "protected")) \
            and any(word in text for word in ("fetch first", "non-fast-forward", "stale info",
                                              "atomic", "cannot lock ref",
                                              "failed to update", "failed to lock")):
        return RemoteMoved(text)
    return GitError(f"cannot push to {url}: {last_line(error)}")
