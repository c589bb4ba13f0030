"""The cluster repository: the only module that runs git (DESIGN §3).

Reads go through `ClusterRepo.sync`, which returns an immutable `Snapshot` of the
remote's tip.  Writes go through one primitive, `ClusterRepo.transact(change, message)`.

A change is either a list of `Op` (Put, Create, Remove), which commute with other
nodes' changes, or a function of the current `Snapshot` that returns such a list.

*   A function is applied compare-and-set: take the local lock, bring the clone to the
    remote tip, apply, commit, push; a refused push re-fetches and re-applies, with
    jittered backoff, until a deadline.
*   A list of ops is first published as an *intent* on a ref of its own,
    ``refs/picluster/inbox/<id>``: a push nobody else contends for.  Whoever pushes
    ``main`` next carries every pending intent into its commit and deletes the carried
    refs in the same atomic push.  Writers therefore help each other instead of
    fighting for the tip: a storm of N registrations costs about N + a few pushes, not
    N².  The oldest fresh intent's writer carries first, the others wait briefly for it.

Readers of ``main`` see only DESIGN §2's files; intents never reach ``main`` as such.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path, PurePosixPath

import git
from filelock import FileLock

from picluster.settings import Settings

__all__ = [
    "Change",
    "ClusterRepo",
    "Create",
    "GitError",
    "Op",
    "Put",
    "Remove",
    "Snapshot",
    "TransactResult",
    "decode_ops",
    "encode_ops",
    "init_bare",
]

log = logging.getLogger(__name__)

INBOX = "refs/picluster/inbox"
_WORK_REF = "refs/picluster/work"  # where fast-import leaves the commit about to be pushed
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
# An intent older than this whose writer has not carried it is an orphan (its writer
# died); any writer carries it, so it never blocks the queue.
_ORPHAN_AFTER = 10.0
# A writer that is not first in the inbox carries itself once main has not moved for
# this long: the carrier it waited for has died.  Generous, because a carrier that is
# merely slow (a loaded server) must not be joined by every writer at once.
_PATIENCE = 5.0
# After its own intent landed, a carrier goes on carrying newcomers this long.
_DRAIN = 2.0


class GitError(RuntimeError):
    """git failed in a way retrying will not fix (or the deadline passed)."""


# -- changes ---------------------------------------------------------------------------


def _check_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if (not parts or path.startswith("/") or ".." in parts or "." in parts
            or parts[0] == ".git" or "\\" in path or path != "/".join(parts)):
        raise ValueError(f"'{path}' is not a plain relative path inside the repository")
    return path


@dataclass(frozen=True)
class _Op:
    path: str

    def __post_init__(self) -> None:
        _check_path(self.path)


@dataclass(frozen=True)
class Put(_Op):
    """Write `content` to `path` (create or replace)."""

    content: str

    def applies_to(self, current: str | None) -> bool:
        return current != self.content


@dataclass(frozen=True)
class Create(_Op):
    """Write `content` to `path` only if the path does not exist: compare-and-set."""

    content: str

    def applies_to(self, current: str | None) -> bool:
        return current is None


@dataclass(frozen=True)
class Remove(_Op):
    """Delete `path`; with `expect`, only while it still holds exactly that content."""

    expect: str | None = None

    def applies_to(self, current: str | None) -> bool:
        return current is not None and (self.expect is None or current == self.expect)


Op = Put | Create | Remove
_OPS: dict[str, type[Put] | type[Create] | type[Remove]] = {
    "put": Put, "create": Create, "remove": Remove}
Change = Sequence[Op] | Callable[["Snapshot"], Sequence[Op]]


def encode_ops(ops: Sequence[Op]) -> list[dict[str, str]]:
    names = {cls: name for name, cls in _OPS.items()}
    return [{"op": names[type(op)], **{k: v for k, v in vars(op).items() if v is not None}}
            for op in ops]


def decode_ops(items: list[dict[str, str]]) -> list[Op]:
    return [_OPS[item["op"]](**{k: v for k, v in item.items() if k != "op"})
            for item in items]


@dataclass(frozen=True)
class TransactResult:
    """What a transaction did: the commit it landed in (None: nothing to change)."""

    commit: str | None
    attempts: int = 0  # pushes this writer made (intent ref + main)
    carried: int = 0  # other writers' intents this writer carried into main
    changed: tuple[str, ...] = ()  # paths this writer's own ops change


@dataclass(frozen=True, order=True)
class _Intent:
    """A pending change on its own inbox ref."""

    ref: str
    sha: str
    created: float  # epoch seconds, from the ref's name

    @classmethod
    def named(cls, ref: str, sha: str) -> _Intent:
        stamp = ref.rsplit("/", 1)[-1].split("-", 1)[0]
        return cls(ref, sha, int(stamp) / 1000 if stamp.isdigit() else 0.0)

    @property
    def age(self) -> float:
        return time.time() - self.created


# -- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A read-only view of one commit of the cluster repository."""

    repo: git.Repo = field(repr=False)
    commit: str
    mutex: threading.RLock = field(repr=False, compare=False)

    @cached_property
    def _dirs(self) -> dict[str, dict[str, git.Blob | git.Tree]]:
        # Each directory's entries, parsed once: a snapshot is read many times (a scan
        # of a busy queue looks up every task), and GitPython re-parses a tree per lookup.
        return {}

    def _entries(self, directory: str) -> dict[str, git.Blob | git.Tree]:
        if directory not in self._dirs:
            if directory:
                parent, _, name = directory.rpartition("/")
                tree = self._entries(parent).get(name)
            else:
                tree = self.repo.commit(self.commit).tree
            self._dirs[directory] = ({entry.name: entry for entry in tree}
                                     if isinstance(tree, git.Tree) else {})
        return self._dirs[directory]

    def _item(self, path: str) -> git.Blob | git.Tree | None:
        directory, _, name = _check_path(path).rpartition("/")
        with self.mutex:
            return self._entries(directory).get(name)

    def read(self, path: str) -> str | None:
        """The text of `path`, or None when it does not exist (or is not a file)."""
        item = self._item(path)
        if not isinstance(item, git.Blob):
            return None
        with self.mutex:
            return item.data_stream.read().decode("utf-8", errors="replace")

    def is_regular_file(self, path: str) -> bool:
        """True for a plain file (not a symlink, submodule or directory)."""
        item = self._item(path)
        return isinstance(item, git.Blob) and item.mode & 0o170000 == 0o100000

    def listdir(self, path: str, *, files: bool = False) -> list[str]:
        """Names directly under directory `path` (only files, with `files`), sorted;
        [] when it does not exist."""
        _check_path(path)
        with self.mutex:  # a file or a missing directory has no entries
            return sorted(name for name, entry in self._entries(path).items()
                          if not files or isinstance(entry, git.Blob))


# -- writing ---------------------------------------------------------------------------


class ClusterRepo:
    """A node's clone of the cluster repository, and the one door to git."""

    def __init__(self, url: str, clone_dir: Path, *, branch: str = "main",
                 writer: str = "picluster", ssh_command: str | None = None,
                 deadline: float = 120.0) -> None:
        self.url = url
        self.clone_dir = Path(clone_dir)
        self.branch = branch
        self.writer = writer
        self.deadline = deadline
        self._env = {
            "GIT_AUTHOR_NAME": f"picluster {writer}",
            "GIT_AUTHOR_EMAIL": f"{writer}@picluster",
            "GIT_COMMITTER_NAME": f"picluster {writer}",
            "GIT_COMMITTER_EMAIL": f"{writer}@picluster",
            "GIT_TERMINAL_PROMPT": "0",
        }
        if ssh_command:
            self._env["GIT_SSH_COMMAND"] = ssh_command
        # One writer at a time: the file lock keeps other processes out of the clone, the
        # writing lock this process's other threads (sync() is a writer: it moves the
        # tracking ref).  The mutex only guards GitPython's object reads (its long-lived
        # `cat-file` processes are not thread-safe), so reading a Snapshot never waits
        # for a writer's network round trips.
        self._lock = FileLock(str(self.clone_dir) + ".lock")
        self._writing = threading.RLock()
        self._mutex = threading.RLock()
        self._repo: git.Repo | None = None

    @classmethod
    def from_settings(cls, settings: Settings, writer: str) -> ClusterRepo:
        """The clone a node (or a CLI on it) uses: `settings.clone_dir`, over ssh when the
        URL needs it."""
        return cls(settings.repo, settings.clone_dir, branch=settings.branch, writer=writer,
                   ssh_command=settings.ssh_command())

    # -- the clone ---------------------------------------------------------------------

    @property
    def repo(self) -> git.Repo:
        with self._mutex:
            if self._repo is None:
                self._repo = self._open()
            return self._repo

    def _open(self) -> git.Repo:
        """Open the clone, cloning first; a broken clone is moved aside and re-cloned.

        The clone is bare: every read goes through git's objects (`Snapshot`) and every
        commit through fast-import, so a busy queue costs no file per task on the SD card.
        """
        self.clone_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.clone_dir.exists():
                try:
                    repo = git.Repo(self.clone_dir)
                    repo.git.update_environment(**self._env)
                    repo.git.rev_parse("--verify", f"refs/remotes/origin/{self.branch}")
                    repo.git.fsck("--connectivity-only", "--no-dangling")
                    return repo
                except (git.GitError, ValueError) as error:
                    # SD cards corrupt files.  The clone holds no unpushed work outside
                    # a transaction, so a fresh clone loses nothing.
                    aside = self.clone_dir.with_name(f"{self.clone_dir.name}.broken")
                    log.warning("clone %s is broken (%s); moving it to %s and re-cloning",
                                self.clone_dir, str(error).strip().splitlines()[-1], aside)
                    # Only the latest broken clone is kept, for a post-mortem.
                    shutil.rmtree(aside, ignore_errors=True)
                    shutil.move(self.clone_dir, aside)
            log.info("cloning %s into %s", self.url, self.clone_dir)
            repo = git.Repo.init(self.clone_dir, bare=True)
            repo.git.update_environment(**self._env)
            repo.create_remote("origin", self.url)
            # Fetched objects stay packed rather than one file each.
            repo.git.config("fetch.unpackLimit", "1")
            self._repo = repo
            try:
                self._fetch()
            except GitError as error:
                shutil.rmtree(self.clone_dir, ignore_errors=True)
                self._repo = None
                raise GitError(f"cannot clone {self.url} (branch {self.branch}): "
                               f"{str(error).split(': ', 1)[-1]}") from None
            return repo

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the clone's lock: one writer per clone, across threads and processes."""
        self.clone_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._writing, self._lock:
            yield

    def _fetch(self, intents: Sequence[_Intent] = ()) -> str:
        """Fetch main (and the objects of `intents`); return the remote tip's sha.

        Intents are fetched without local refs: a ref per intent per fetch would be a
        file created and deleted on every node for every write.
        """
        refspecs = [f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}",
                    *(intent.ref for intent in intents)]
        try:
            self.repo.git.fetch("--quiet", "--no-tags", "--no-write-fetch-head", "origin",
                                *refspecs)
        except git.GitCommandError as error:
            if intents and "couldn't find remote ref" in str(error.stderr):
                raise _Refused("an intent was carried meanwhile") from None
            if "couldn't find remote ref" in str(error.stderr):
                raise GitError(f"{self.url} has no branch '{self.branch}'; is it a cluster "
                               "repository (picluster init-repo)?") from None
            raise GitError(f"cannot fetch from {self.url}: {_last_line(error)}") from None
        return self._remote_tip()

    def _remote_tip(self) -> str:
        # Read the ref file in Python: one git process less on every poll.
        return git.SymbolicReference.dereference_recursive(
            self.repo, f"refs/remotes/origin/{self.branch}")

    def sync(self) -> Snapshot:
        """Fetch the remote tip and return a snapshot of it."""
        with self.locked():
            return self._snapshot(self._fetch())

    def snapshot(self) -> Snapshot:
        """The last synced state, without touching the network."""
        with self._mutex:
            return self._snapshot(self._remote_tip())

    def _snapshot(self, sha: str) -> Snapshot:
        return Snapshot(self.repo, sha, self._mutex)

    def log(self, path: str | None = None, limit: int = 20) -> list[dict[str, str]]:
        """Recent commits on the remote tip (optionally touching `path`), newest first."""
        args = [f"--max-count={limit}", "--format=%H%x00%an%x00%aI%x00%s",
                f"refs/remotes/origin/{self.branch}"]
        if path:
            args += ["--", path]
        rows = [line.split("\0") for line in self.repo.git.log(*args).splitlines()]
        return [dict(zip(("commit", "author", "date", "subject"), row, strict=True))
                for row in rows]

    # -- the transaction ---------------------------------------------------------------

    def transact(self, change: Change, message: str, *,
                 deadline: float | None = None) -> TransactResult:
        """Apply `change` to the remote tip and push it; see the module docstring."""
        give_up = time.monotonic() + (self.deadline if deadline is None else deadline)
        with self.locked():
            if callable(change):
                return self._compare_and_set(change, message, give_up)
            return self._submit(tuple(change), message, give_up)

    def carry_orphans(self) -> TransactResult:
        """Carry intents whose writers died before they landed (the agent calls this)."""
        with self.locked():
            _, inbox = self._ls_remote(time.monotonic())
            orphans = [i for i in inbox if i.age > _ORPHAN_AFTER]
            if not orphans:
                return TransactResult(None)
            try:
                tip = self._fetch(orphans)
            except _Refused:
                return TransactResult(None)  # somebody else carried them
            pushed, commit = self._push_main(tip, (), "", orphans)
            return TransactResult(commit if pushed else None, attempts=1,
                                  carried=len(orphans) if pushed else 0)

    def _compare_and_set(self, change: Callable[[Snapshot], Sequence[Op]], message: str,
                         give_up: float) -> TransactResult:
        for attempts, backoff in enumerate(_backoffs(), start=1):
            _, intents = self._ls_remote(give_up)
            try:
                tip = self._fetch(intents)
            except _Refused:
                tip = None  # an intent was carried meanwhile: read the inbox again
            if tip is not None:
                snapshot = self._snapshot(tip)
                ops = tuple(change(snapshot))
                changed = _effective(snapshot, ops)
                if not changed:
                    return TransactResult(None, attempts=attempts - 1)
                pushed, commit = self._push_main(tip, ops, message, intents)
                if pushed:
                    return TransactResult(commit, attempts, len(intents), changed)
            if time.monotonic() + backoff > give_up:
                raise GitError(f"gave up pushing '{message}' to {self.url} after "
                               f"{attempts} attempts: the remote kept moving")
            time.sleep(backoff)
        raise AssertionError("unreachable")

    def _submit(self, ops: tuple[Op, ...], message: str, give_up: float) -> TransactResult:
        tip = self._fetch_until(give_up)
        changed = _effective(self._snapshot(tip), ops)
        if not changed:
            return TransactResult(None)
        body = json.dumps({"message": message, "ops": encode_ops(ops)})
        with _textfile(f"intent: {message}\n\n{body}") as text:
            sha = self.repo.git.commit_tree(_EMPTY_TREE, "-F", text)
        # The name sorts by creation time: the inbox is a FIFO.
        mine = f"{INBOX}/{int(time.time() * 1000):015d}-{self.writer}-{uuid.uuid4().hex[:8]}"
        self._push("origin", f"{sha}:{mine}")
        attempts = 1

        # Wait, cheaply (ls-remote writes nothing), until another writer has carried the
        # intent or it is this writer's turn: first in the inbox while nobody else is
        # moving main, or main has stood still too long (its carrier stalled).
        last_tip, last_move = tip, time.monotonic()
        for delay in itertools.chain([0.0], _backoffs(first=0.1, cap=1.0, factor=2.0)):
            time.sleep(delay)
            tip, inbox = self._ls_remote(give_up)
            if mine not in {i.ref for i in inbox}:
                self._fetch_until(give_up)
                return TransactResult(tip, attempts, 0, changed)
            if tip != last_tip:
                # Someone is pushing main, and every push of main carries the inbox.
                last_tip, last_move = tip, time.monotonic()
                continue
            fresh = [i.ref for i in inbox if i.age <= _ORPHAN_AFTER] or [mine]
            if fresh[0] == mine or time.monotonic() - last_move > _PATIENCE:
                break
            self._check(give_up, message, attempts, mine)

        # This writer's turn: carry everything pending, its own intent included, then
        # keep draining for a moment, so one writer carries a whole storm.
        carried, landed, drain_until = 0, None, None
        remote_tip, intents = tip, inbox
        for backoff in _backoffs():
            own = any(i.ref == mine for i in intents)
            if not own and drain_until is None:
                drain_until = time.monotonic() + _DRAIN
            if not intents or (not own and time.monotonic() > (drain_until or 0)):
                if remote_tip != self._remote_tip():
                    self._fetch_until(give_up)
                return TransactResult(landed or remote_tip, attempts, carried, changed)
            try:
                tip = self._fetch(intents)
            except _Refused:
                remote_tip, intents = self._ls_remote(give_up)
                continue
            attempts += 1
            pushed, new_tip = self._push_main(tip, (), message if own else "", intents, mine)
            if pushed:
                carried += len(intents) - own
                landed = new_tip if own else landed
            else:
                self._check(give_up, message, attempts, mine)
                time.sleep(backoff)
            remote_tip, intents = self._ls_remote(give_up)
        raise AssertionError("unreachable")

    def _check(self, give_up: float, message: str, attempts: int, mine: str) -> None:
        if time.monotonic() > give_up:
            raise GitError(
                f"gave up waiting for '{message}' to land in {self.url} after {attempts} "
                f"pushes; it stays queued as {mine} and the next writer carries it")

    def _ls_remote(self, give_up: float) -> tuple[str, list[_Intent]]:
        """The remote's tip and its inbox (oldest first), read without writing anything
        locally; transient failures are retried until `give_up`."""
        for backoff in _backoffs(first=0.5, cap=5.0):
            try:
                out = self.repo.git.ls_remote("origin", f"refs/heads/{self.branch}",
                                              f"{INBOX}/*")
                break
            except git.GitCommandError as error:
                if time.monotonic() + backoff > give_up:
                    raise GitError(f"cannot read {self.url}: {_last_line(error)}") from None
                log.warning("cannot read %s (%s); retrying in %.1f s", self.url,
                            _last_line(error), backoff)
                time.sleep(backoff)
        tip, intents = "", []
        for line in out.splitlines():
            sha, ref = line.split()
            if ref == f"refs/heads/{self.branch}":
                tip = sha
            elif ref.startswith(INBOX + "/"):
                intents.append(_Intent.named(ref, sha))
        return tip, sorted(intents)

    def _fetch_until(self, give_up: float) -> str:
        """Fetch, retrying transient failures (no network yet, a busy server) until give_up."""
        for backoff in _backoffs(first=0.5, cap=5.0):
            try:
                return self._fetch()
            except GitError as error:
                if time.monotonic() + backoff > give_up:
                    raise
                log.warning("%s; retrying in %.1f s", error, backoff)
                time.sleep(backoff)
        raise AssertionError("unreachable")

    def _read_intent(self, intent: _Intent) -> tuple[str, tuple[Op, ...]]:
        """The message and ops an intent carries; a malformed one carries nothing."""
        try:
            with self._mutex:
                text = self.repo.commit(intent.sha).message
            data = json.loads(text.split("\n\n", 1)[1])
            return str(data["message"]), tuple(decode_ops(data["ops"]))
        except (IndexError, KeyError, TypeError, ValueError) as error:
            # Dropped like any carried intent, with nothing applied: it can never apply.
            log.warning("dropping malformed intent %s: %s", intent.ref, error)
            return f"drop malformed intent {intent.ref}", ()

    def _push_main(self, tip: str, ops: Sequence[Op], message: str,
                   intents: Sequence[_Intent], mine: str | None = None,
                   ) -> tuple[bool, str | None]:
        """Commit every intent and `ops` on `tip`; push main and drop the intents' refs.

        One atomic push: main moves and the carried refs go, or nothing happens.
        Returns (pushed, the new tip).
        """
        new_tip = self._commit(tip, ops, message, intents, mine)
        refspecs = [f":{i.ref}" for i in intents]
        if new_tip != tip:
            refspecs.insert(0, f"{new_tip}:refs/heads/{self.branch}")
        if refspecs:
            leases = [f"--force-with-lease={i.ref}:{i.sha}" for i in intents]
            try:
                self._push(*leases, "--atomic", "origin", *refspecs)
            except _Refused:
                return False, None
        return True, new_tip

    def _commit(self, tip: str, ops: Sequence[Op], message: str,
                intents: Sequence[_Intent], mine: str | None) -> str:
        """Commit the intents, then `ops`, on top of `tip`, with one fast-import (one pack,
        no working tree); return the new sha, or `tip` itself when nothing changed."""
        # Each path is read from git once, however many ops and intents touch it.
        read = cache(self._snapshot(tip).read)
        tree: dict[str, str | None] = {}  # path -> content after the ops so far

        def apply(batch: Sequence[Op]) -> bool:
            touched = False
            for op in batch:
                current = tree[op.path] if op.path in tree else read(op.path)
                if op.applies_to(current):
                    tree[op.path] = None if isinstance(op, Remove) else op.content
                    touched = True
            return touched

        messages = []
        for intent in intents:
            carried_message, carried_ops = self._read_intent(intent)
            if apply(carried_ops) and intent.ref != mine:
                messages.append(carried_message)
        apply(ops)
        changes = {path: content for path, content in tree.items()
                   if content != read(path)}
        if not changes:
            return tip
        subject = message or (messages.pop(0) if messages else "carry changes")
        if messages:
            subject += f" (+{len(messages)} carried)"
        text = (subject + "\n" + "".join(f"\n- {m}" for m in messages)).encode()
        stream = bytearray()
        stamp = f"{self._env['GIT_COMMITTER_NAME']} <{self._env['GIT_COMMITTER_EMAIL']}> " \
                f"{int(time.time())} +0000"
        stream += f"commit {_WORK_REF}\nauthor {stamp}\ncommitter {stamp}\n".encode()
        stream += b"data %d\n%s\nfrom %s\n" % (len(text), text, tip.encode())
        for path, content in sorted(changes.items()):
            if content is None:
                stream += b"D %s\n" % _quote(path)
            else:
                data = content.encode()
                stream += b"M 100644 inline %s\ndata %d\n%s\n" % (_quote(path), len(data), data)
        stream += b"done\n"
        with tempfile.TemporaryFile() as feed:
            feed.write(stream)
            feed.seek(0)
            self.repo.git.fast_import("--quiet", "--force", "--done", istream=feed)
        return git.SymbolicReference.dereference_recursive(self.repo, _WORK_REF)

    def _push(self, *args: str) -> None:
        try:
            self.repo.git.push("--porcelain", "--quiet", *args)
        except git.GitCommandError as error:
            text = f"{error.stdout}\n{error.stderr}"
            # Only "the remote moved" is worth another try; a hook, a protected branch or
            # missing rights refuse every attempt alike.
            if not any(word in text for word in ("declined", "denied", "permission",
                                                  "protected")) \
                    and any(word in text for word in ("fetch first", "non-fast-forward",
                                                      "stale info", "atomic",
                                                      "cannot lock ref", "failed to update",
                                                      "failed to lock")):
                raise _Refused(text) from None
            raise GitError(f"cannot push to {self.url}: {_last_line(error)}") from None


class _Refused(Exception):
    """The remote refused a push because it moved: fetch and try again."""


@contextmanager
def _textfile(text: str) -> Iterator[str]:
    """`text` in a temporary file: messages and path lists can outgrow a command line."""
    with tempfile.NamedTemporaryFile("w", prefix="picluster-", suffix=".txt") as handle:
        handle.write(text)
        handle.flush()
        yield handle.name


def _effective(snapshot: Snapshot, ops: Sequence[Op]) -> tuple[str, ...]:
    """The paths `ops` would change on `snapshot` (empty: the change is a no-op)."""
    return tuple(sorted({op.path for op in ops if op.applies_to(snapshot.read(op.path))}))


def _quote(path: str) -> bytes:
    """A path as fast-import reads it: C-quoted, so spaces and quotes are safe."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'.encode()


def _backoffs(first: float = 0.02, cap: float = 0.5, factor: float = 1.5) -> Iterator[float]:
    """Jittered exponential backoff: first, then `factor` times more each time, capped."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.5)
        delay = min(delay * factor, cap)


def _last_line(error: git.GitCommandError) -> str:
    """The last thing git said on stderr (GitPython wraps it in "stderr: '...'")."""
    text = str(error.stderr or "").strip().removeprefix("stderr:").strip().strip("'")
    lines = [line.strip() for line in text.splitlines() if line.strip().strip("'")]
    # git's verdict is its last fatal:/error: line; what follows it is boilerplate
    # ("Please make sure you have the correct access rights...").
    verdicts = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (verdicts or lines or [f"git exited with status {error.status}"])[-1]


def init_bare(path: Path, files: dict[str, str], message: str) -> None:
    """Create a bare repository at `path` (or seed an empty one) holding `files` on main."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        try:
            bare = git.Repo(path)
        except git.GitError:
            raise GitError(f"{path} exists and is not a git repository; pick an empty or "
                           "new directory") from None
        if bare.git.for_each_ref("refs/heads"):
            raise GitError(f"{path} already has branches; it is not an empty repository")
    else:
        bare = git.Repo.init(path, bare=True, initial_branch="main")
        # Pushes stay packed rather than one file per object: many small writes.
        bare.git.config("transfer.unpackLimit", "1")
    work = path.with_name(f".{path.name}.seed-{os.getpid()}")
    try:
        repo = git.Repo.init(work, initial_branch="main")
        for name, text in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(text)
        repo.git.add("--all")
        repo.git.update_environment(GIT_AUTHOR_NAME="picluster", GIT_AUTHOR_EMAIL="init@picluster",
                                    GIT_COMMITTER_NAME="picluster",
                                    GIT_COMMITTER_EMAIL="init@picluster")
        repo.git.commit("--quiet", "-m", message)
        repo.git.push("--quiet", str(path.resolve()), "main:refs/heads/main")
    finally:
        shutil.rmtree(work, ignore_errors=True)
