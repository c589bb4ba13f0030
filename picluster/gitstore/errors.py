"""What can go wrong with git, and which failures are worth another try.

Decisions read git's fixed, machine-readable output (the status lines of
``git push --porcelain``), never its translated prose; every git process runs in the C
locale anyway (`picluster.gitstore.clone.environment`).
"""

from __future__ import annotations

import re

import git

__all__ = ["GitError", "RemoteMoved", "Unreachable", "fetch_error", "last_line", "push_error"]


class GitError(RuntimeError):
    """git failed in a way retrying will not fix (or the deadline passed)."""


class Unreachable(GitError):
    """The remote did not answer (no network yet, a busy server): worth another try,
    unlike a repository or branch that does not exist."""


class RemoteMoved(Exception):
    """The remote moved under a push or a fetch: fetch and try again."""


# Why a ref was refused when the remote moved: the remote tip or a leased ref is not
# what this writer saw (said by this side before sending), or another push won the race
# for the ref on the server.  Every other reason (a hook, a protected branch, a hidden
# ref, missing rights) refuses every attempt alike.
_MOVED = frozenset({
    "fetch first", "non-fast-forward", "stale info",
    "atomic transaction failed", "failed to update ref", "failed to lock",
    "incorrect old value provided",  # git >= 2.50, non-atomic pushes
})
# What an atomic push says of its other refs once one is refused: nothing by itself.
_ATOMIC = frozenset({"atomic push failed", "atomic push failure"})


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


# What git says when the repository itself is missing (a local path, over ssh, on a forge);
# waiting will not create it.
_MISSING = re.compile(r"does not appear to be a git repository|repository not found"
                      r"|repository '[^']*' not found", re.IGNORECASE)


def fetch_error(doing: str, url: str, branch: str, error: git.GitCommandError) -> GitError:
    """What a failed fetch, clone or ls-remote (`doing`: "fetch from", ...) means: one
    line naming the URL or the branch and the fix when either does not exist (waiting
    will not create them), else `Unreachable`."""
    said = _said(error, "stderr")
    if f"couldn't find remote ref refs/heads/{branch}" in said:
        return GitError(f"cannot {doing} {url}: it has no branch '{branch}'; check `branch` "
                        "in the boot config (main unless set), or create the repository "
                        "with `picluster init-repo`")
    missing = next((line.strip() for line in said.splitlines() if _MISSING.search(line)), None)
    if missing:
        return GitError(f"cannot {doing} {url}: no repository there ({missing}); check `repo` "
                        "in the boot config, or create it with `picluster init-repo`")
    return Unreachable(f"cannot {doing} {url}: {last_line(error)}")


def _refused(porcelain: str) -> list[tuple[str, str]]:
    """(ref, reason) for each ref a `git push --porcelain` refused: its status lines read
    "!<TAB>src:dst<TAB>[rejected] (reason)" or "... [remote rejected] (reason)"."""
    refused = []
    for line in porcelain.splitlines():
        flag, _, rest = line.partition("\t")
        refs, _, summary = rest.partition("\t")
        if flag == "!":
            _, _, reason = summary.partition("] (")
            refused.append((refs.rpartition(":")[2], reason.removesuffix(")") or summary))
    return refused


def push_error(url: str, error: git.GitCommandError) -> RemoteMoved | GitError:
    """What a failed `git push --porcelain` means: `RemoteMoved` when the remote moved,
    else a `GitError` in the server's words."""
    refused = [(ref, why) for ref, why in _refused(_said(error, "stdout")) if why not in _ATOMIC]
    if refused and all(why in _MOVED for _, why in refused):
        return RemoteMoved("; ".join(f"{ref}: {why}" for ref, why in refused))
    if not refused:  # refused as a whole: no access, no network
        return GitError(f"cannot push to {url}: {last_line(error)}")
    # A hook's own words reach us as "remote: ..." lines, padded to clear progress output.
    words = [line.removeprefix("remote:").strip() for line in _said(error, "stderr").splitlines()
             if line.startswith("remote:") and line.removeprefix("remote:").strip()]
    return GitError(f"cannot push to {url}: "
                    + "; ".join(f"{ref}: {why}" for ref, why in refused)
                    + (f" ({' '.join(words)})" if words else ""))
