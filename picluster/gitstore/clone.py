"""A node's bare clone of the cluster repository, and every git process picluster runs.

The clone is bare: every read goes through git's objects (`Snapshot`) and every commit
through fast-import, so a busy queue costs no file per task on the SD card.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import git
from filelock import FileLock

from picluster.gitstore import fastimport
from picluster.gitstore.errors import (
    GitError,
    RemoteMoved,
    Unreachable,
    fetch_error,
    last_line,
    push_error,
)
from picluster.gitstore.snapshot import Snapshot
from picluster.retry import backoffs, retry

__all__ = ["LOCALE", "Clone", "environment", "init_bare"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# picluster reads what git says ("couldn't find remote ref", push status lines), so git
# must say it in its own words, not translated.
LOCALE = {"LC_ALL": "C", "LANGUAGE": ""}
_WORK_REF = "refs/picluster/work"  # where fast-import leaves the commit about to be pushed
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_NO_DATE = "946684800 +0000"  # 2000-01-01: any fixed date will do
# A shallow clone is cut back to its tip every this many fetches, so it holds main's
# commits of the last 20 fetches at most.  A cut is one local git fetch (about 10 ms, no
# network) per 20 remote ones.  A node fetching every 30 s when idle, and every second or
# so when busy, cuts every 10 minutes, or every 20 seconds.
_RECUT_EVERY = 20

Rewind = Callable[[str, str], None]  # called with (the tip seen last, the new tip)


def environment(name: str, email: str, ssh_command: str | None = None) -> dict[str, str]:
    """The environment of every git process: the C locale, who commits, no prompts."""
    env = {**LOCALE, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email,
           "GIT_TERMINAL_PROMPT": "0"}
    if ssh_command:
        env["GIT_SSH_COMMAND"] = ssh_command
    return env


def _open(path: Path, env: dict[str, str]) -> git.Repo:
    repo = git.Repo(path)
    repo.git.update_environment(**env)
    return repo


def _init(path: Path, env: dict[str, str], **options: object) -> git.Repo:
    repo = git.Repo.init(path, env=env, **options)
    repo.git.update_environment(**env)
    return repo


class Clone:
    """A bare clone of `url`'s `branch` at `path`, committing as `writer`.

    Not locked by itself: `lock` keeps other processes out (hold it to write), `mutex`
    guards GitPython's object reads (its long-lived `cat-file` processes are not
    thread-safe).
    """

    def __init__(self, url: str, path: Path, *, branch: str, writer: str,
                 ssh_command: str | None = None, shallow: bool = False) -> None:
        self.url = url
        self.path = Path(path)
        self.branch = branch
        self.writer = writer
        # Clone the tip only (--depth 1), then fetch what main gains, now and then cutting
        # the history back to the tip: the clone stays small whatever the history holds;
        # commits and pushes need no more than the tip they build on.
        self.shallow = shallow
        self._fetches = 0  # since the last cut
        self._cut: str | None = None  # the tip the clone was last cut back to
        self.env = environment(f"picluster {writer}", f"{writer}@picluster", ssh_command)
        self.lock = FileLock(str(self.path) + ".lock")
        self.mutex = threading.RLock()
        self.on_rewind: list[Rewind] = []  # told when a fetch finds the branch rewound
        self._repo: git.Repo | None = None

    @property
    def repo(self) -> git.Repo:
        with self.mutex:
            if self._repo is None:
                self._repo = self._open()
            return self._repo

    def _open(self) -> git.Repo:
        """Open the clone, cloning first; a broken clone is moved aside and re-cloned."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self.path.exists():
                try:
                    repo = _open(self.path, self.env)
                    repo.git.rev_parse("--verify", f"refs/remotes/origin/{self.branch}")
                    repo.git.fsck("--connectivity-only", "--no-dangling")
                    return repo
                except (git.GitError, ValueError) as error:
                    # SD cards corrupt files.  The clone holds no unpushed work outside
                    # a transaction, so a fresh clone loses nothing.
                    aside = self.path.with_name(f"{self.path.name}.broken")
                    log.warning("clone %s is broken (%s); moving it to %s and re-cloning",
                                self.path, str(error).strip().splitlines()[-1], aside)
                    # Only the latest broken clone is kept, for a post-mortem.
                    shutil.rmtree(aside, ignore_errors=True)
                    shutil.move(self.path, aside)
            log.info("cloning %s into %s", self.url, self.path)
            repo = _init(self.path, self.env, bare=True)
            repo.create_remote("origin", self.url)
            # Fetched objects stay packed rather than one file each.
            repo.git.config("fetch.unpackLimit", "1")
            self._repo = repo
            try:
                self._fetch((), "clone")
            except GitError:
                shutil.rmtree(self.path, ignore_errors=True)
                self._repo = None
                raise
            return repo

    # -- the remote --------------------------------------------------------------------

    def fetch(self, refs: Sequence[str] = ()) -> str:
        """Fetch the branch (and the objects of `refs`); return the remote tip's sha.

        `refs` are fetched without local refs: a ref per intent per fetch would be a file
        created and deleted on every node for every write.  RemoteMoved: one of `refs`
        is gone.  A new tip that does not descend from the one seen last (a force-push
        rewound the branch) is logged and told to `on_rewind`.
        """
        return self._fetch(refs, "fetch from")

    def _fetch(self, refs: Sequence[str], doing: str) -> str:
        seen = self._tracking_tip()
        refspecs = [f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}", *refs]
        # Shallow: the tip only, the first time.  After that, no --depth: git sends every
        # commit down to those the clone holds, so `_descends` knows, whereas a --depth 1
        # tip arrives without parents and looks rewound.  (A rewind onto a commit older
        # than the clone's history fetches that history once; `_recut` drops it again.)
        depth = ["--depth", "1"] if self.shallow and seen is None else []
        try:
            self._git_fetch(*depth, "origin", *refspecs)
        except git.GitCommandError as error:
            if refs and "couldn't find remote ref" in str(error.stderr) \
                    and f"refs/heads/{self.branch}" not in str(error.stderr):
                raise RemoteMoved("a ref was deleted meanwhile") from None
            raise fetch_error(doing, self.url, self.branch, error) from None
        tip = self.remote_tip()
        if seen is not None and tip != seen and not self._descends(tip, seen):
            log.warning("%s of %s was REWOUND: its tip %s does not descend from %s, the tip "
                        "this clone saw last; the commits in between are gone from it "
                        "(a force-push?)", self.branch, self.url, tip, seen)
            for callback in self.on_rewind:
                callback(seen, tip)
        if self.shallow:
            self._recut(tip)
        return tip

    def _git_fetch(self, *args: str) -> None:
        # A shallow clone's gc rewrites the `shallow` file, so it runs inside the fetch,
        # under the clone's lock, not detached where it would race the next fetch.  What
        # the cuts drop (every commit fetched, in the end) waits out gc's grace period of
        # two weeks in one cruft pack, deltified, not a file per object (git >= 2.37).
        gc = ["-c", "gc.autoDetach=false", "-c", "gc.cruftPacks=true"] if self.shallow else []
        self.repo.git.execute(["git", *gc, "fetch", "--quiet", "--no-tags",
                               "--no-write-fetch-head", *args])

    def _recut(self, tip: str) -> None:
        """Every `_RECUT_EVERY` fetches, cut the history back to `tip` alone, as a
        --depth 1 clone holds it, so that gc can drop the commits before it."""
        self._fetches += 1
        if self._fetches < _RECUT_EVERY or tip == self._cut:
            return
        self._fetches, self._cut = 0, tip
        # A --depth 1 fetch of the tracking ref from the clone itself: no network, and no
        # commit but `tip` becomes shallow (from the remote, main may have moved on: its
        # new tip would arrive without parents, and the next fetch would see a rewind).
        try:
            self._git_fetch("--depth", "1", str(self.path.absolute()),
                            f"refs/remotes/origin/{self.branch}")
        except git.GitCommandError as error:  # the clone stays whole, only longer
            log.warning("could not cut %s back to its tip: %s", self.path, last_line(error))

    def _tracking_tip(self) -> str | None:
        """The tip the last fetch or push saw; None before the first."""
        try:
            return self.remote_tip()
        except ValueError:  # no such ref yet: a fresh clone
            return None

    def _descends(self, tip: str, ancestor: str) -> bool:
        """Whether `ancestor` is `tip` or one of its ancestors (in one step, the common
        case, without a git process)."""
        with self.mutex:
            if ancestor in (parent.hexsha for parent in self.repo.commit(tip).parents):
                return True
        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, tip)
        except git.GitCommandError as error:
            # 1: not an ancestor; anything else (the old commit is gone): cannot tell.
            return error.status != 1
        return True

    def fetch_until(self, give_up: float) -> str:
        """`fetch()`, retrying transient failures until `give_up`."""
        return self._patiently(self.fetch, "fetch", give_up)

    def ls_remote(self, give_up: float, *patterns: str) -> dict[str, str]:
        """The remote's refs matching `patterns` (ref -> sha), read without writing
        anything locally; transient failures are retried until `give_up`."""
        def attempt() -> str:
            try:
                return str(self.repo.git.ls_remote("origin", *patterns))
            except git.GitCommandError as error:
                raise fetch_error("read", self.url, self.branch, error) from None

        out = self._patiently(attempt, "list the remote's refs", give_up)
        return {ref: sha for sha, ref in (line.split() for line in out.splitlines())}

    def _patiently(self, attempt: Callable[[], T], what: str, give_up: float) -> T:
        """`attempt()`, retrying while the remote is `Unreachable` (no network yet, a busy
        server) until `give_up`, a `time.monotonic()` value.  A repository or branch that
        does not exist fails at once."""
        return retry(attempt, retry_on=(Unreachable,), what=what, deadline=give_up,
                     delays=backoffs(first=0.5, cap=5.0))

    def push(self, *args: str) -> None:
        """`git push` with `args`; RemoteMoved when only the remote moving refused it."""
        try:
            self.repo.git.push("--porcelain", "--quiet", *args)
        except git.GitCommandError as error:
            raise push_error(self.url, error) from None

    def remote_tip(self) -> str:
        # Read the ref file in Python: one git process less on every poll.
        return git.SymbolicReference.dereference_recursive(
            self.repo, f"refs/remotes/origin/{self.branch}")

    # -- objects -----------------------------------------------------------------------

    def snapshot(self, sha: str) -> Snapshot:
        return Snapshot(self.repo, sha, self.mutex)

    def message(self, sha: str) -> str:
        """The message of commit `sha`."""
        with self.mutex:
            return str(self.repo.commit(sha).message)

    def committed(self, sha: str) -> float:
        """When commit `sha` was made: epoch seconds, whole, by its committer's clock."""
        with self.mutex:
            return float(self.repo.commit(sha).committed_date)

    def commit(self, parent: str, changes: dict[str, str | None], message: str) -> str:
        """Commit `changes` (path -> content, None: delete) on `parent`; return its sha."""
        ident = f"{self.env['GIT_COMMITTER_NAME']} <{self.env['GIT_COMMITTER_EMAIL']}>"
        with self._writing("commit"), tempfile.TemporaryFile() as feed:
            feed.write(fastimport.stream(_WORK_REF, ident, parent, message, changes))
            feed.seek(0)
            self.repo.git.fast_import("--quiet", "--force", "--done", istream=feed)
        return git.SymbolicReference.dereference_recursive(self.repo, _WORK_REF)

    def commit_text(self, text: str, *, timeless: bool = False) -> str:
        """A parentless commit of the empty tree whose message is `text`; its sha.  A
        `timeless` one carries a fixed date: the same text is always the same commit."""
        env = {"GIT_AUTHOR_DATE": _NO_DATE, "GIT_COMMITTER_DATE": _NO_DATE} if timeless else {}
        with self._writing("commit"), _textfile(text) as name:
            return str(self.repo.git.commit_tree(_EMPTY_TREE, "-F", name, env=env))

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Objects written into the clone: a full disk (or any write error) is a GitError
        like a refused push, which the callers' retries already handle."""
        try:
            yield
        except git.GitCommandError as error:
            raise GitError(f"cannot {what} in {self.path}: {last_line(error)}") from None
        except OSError as error:
            raise GitError(f"cannot {what} in {self.path}: {error.strerror or error}") \
                from None

    def log(self, path: str | None, limit: int) -> list[dict[str, str]]:
        """Commits on the remote tip (optionally touching `path`), newest first."""
        args = [f"--max-count={limit}", "--format=%H%x00%an%x00%aI%x00%s",
                f"refs/remotes/origin/{self.branch}"]
        if path:
            args += ["--", path]
        rows = [line.split("\0") for line in self.repo.git.log(*args).splitlines()]
        return [dict(zip(("commit", "author", "date", "subject"), row, strict=True))
                for row in rows]


@contextmanager
def _textfile(text: str) -> Iterator[str]:
    """`text` in a temporary file: messages can outgrow a command line."""
    with tempfile.NamedTemporaryFile("w", prefix="picluster-", suffix=".txt") as handle:
        handle.write(text)
        handle.flush()
        yield handle.name


def init_bare(path: Path, files: dict[str, str], message: str) -> None:
    """Create a bare repository at `path` (or seed an empty one) holding `files` on main."""
    path = Path(path)
    env = environment("picluster", "init@picluster")
    if path.exists() and any(path.iterdir()):
        try:
            bare = _open(path, env)
        except git.GitError:
            raise GitError(f"{path} exists and is not a git repository; pick an empty or "
                           "new directory") from None
        if bare.git.for_each_ref("refs/heads"):
            raise GitError(f"{path} already has branches; it is not an empty repository")
    else:
        bare = _init(path, env, bare=True, initial_branch="main")
        # Pushes stay packed rather than one file per object: many small writes.
        bare.git.config("transfer.unpackLimit", "1")
    work = path.with_name(f".{path.name}.seed-{os.getpid()}")
    try:
        repo = _init(work, env, initial_branch="main")
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        repo.git.add("--all")
        repo.git.commit("--quiet", "-m", message)
        repo.git.push("--quiet", str(path.resolve()), "main:refs/heads/main")
    finally:
        shutil.rmtree(work, ignore_errors=True)
