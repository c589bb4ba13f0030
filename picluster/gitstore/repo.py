"""The cluster repository as a node sees it: reads and transactions.

Reads go through `ClusterRepo.sync`, which returns an immutable `Snapshot` of the
remote's tip.  Writes go through one primitive, `ClusterRepo.transact(change, message)`.

A change is either a list of `Op` (Put, Create, Remove), which commute with other
nodes' changes, or a function of the current `Snapshot` that returns such a list.

*   A function is applied compare-and-set: take the local lock, bring the clone to the
    remote tip, apply, commit, push; a refused push re-fetches and re-applies, with
    jittered backoff, until a deadline.
*   A list of ops goes through the inbox (`picluster.gitstore.inbox`): published as an
    intent, carried into main by whoever pushes it next.

Either way, every push of main carries the pending intents.

Every fetch checks that the branch only ever moved forward: a tip that does not descend
from the one seen last (a force-push rewound it) is logged loudly and told to the
callbacks given to `on_rewind`.

A `guarded` repository writes only where a guard passes on the very tip a change lands
on: every change is then compare-and-set, and the guard raises to write nothing.  Refs
outside main (`publish`, `refs`) carry signs of life that never become commits on it.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from picluster.gitstore import inbox
from picluster.gitstore.clone import Clone, Rewind
from picluster.gitstore.errors import GitError, RemoteMoved
from picluster.gitstore.inbox import TransactResult
from picluster.gitstore.ops import Op, affected
from picluster.gitstore.snapshot import Snapshot
from picluster.retry import backoffs
from picluster.settings import Settings

__all__ = ["Change", "ClusterRepo", "Guard"]

Change = Sequence[Op] | Callable[[Snapshot], Sequence[Op]]
Guard = Callable[[Snapshot], None]


class ClusterRepo:
    """A node's clone of the cluster repository: the one way picluster reads and
    writes it."""

    def __init__(self, url: str, clone_dir: Path, *, branch: str = "main",
                 writer: str = "picluster", ssh_command: str | None = None,
                 deadline: float = 120.0, shallow: bool = False) -> None:
        self.deadline = deadline
        self._clone = Clone(url, clone_dir, branch=branch, writer=writer,
                            ssh_command=ssh_command, shallow=shallow)
        # One writer at a time: the clone's file lock keeps other processes out, this
        # lock this process's other threads (sync() is a writer: it moves the tracking
        # ref).  Reading a Snapshot takes neither, so it never waits for a writer's
        # network round trips.
        self._writing = threading.RLock()
        self._guard: Guard | None = None

    @classmethod
    def from_settings(cls, settings: Settings, writer: str, *,
                      shallow: bool = False) -> ClusterRepo:
        """The clone a node (or a CLI on it) uses: `settings.clone_dir`, over ssh when the
        URL needs it; `shallow` clones the tip only and stays small (a node's agent)."""
        return cls(settings.repo, settings.clone_dir, branch=settings.branch, writer=writer,
                   ssh_command=settings.ssh_command(), shallow=shallow)

    def guarded(self, guard: Guard) -> ClusterRepo:
        """This clone, writing only where `guard` passes: every change becomes
        compare-and-set, and `guard` judges each tip it would land on (it raises to write
        nothing; the exception reaches the caller of `transact`).  Shares the clone and
        its lock."""
        view = copy.copy(self)
        view._guard = guard
        return view

    @property
    def url(self) -> str:
        return self._clone.url

    @property
    def clone_dir(self) -> Path:
        return self._clone.path

    @property
    def branch(self) -> str:
        return self._clone.branch

    @property
    def writer(self) -> str:
        return self._clone.writer

    def on_rewind(self, callback: Rewind) -> None:
        """Call `callback(seen, tip)` whenever a fetch finds the branch rewound: its new
        `tip` does not descend from the tip `seen` last (also across restarts: the clone
        remembers it).  It runs under the clone's lock: it must not use the repository."""
        self._clone.on_rewind.append(callback)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the clone's lock: one writer per clone, across threads and processes."""
        self.clone_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._writing, self._clone.lock:
            yield

    # -- reading -----------------------------------------------------------------------

    def sync(self) -> Snapshot:
        """Fetch the remote tip and return a snapshot of it."""
        with self.locked():
            return self._clone.snapshot(self._clone.fetch())

    def snapshot(self) -> Snapshot:
        """The last synced state, without touching the network."""
        with self._clone.mutex:
            return self._clone.snapshot(self._clone.remote_tip())

    def ls_remote(self) -> str:
        """The sha of the remote's branch, asked with `git ls-remote`: one round trip that,
        unlike `sync`, transfers no objects and writes nothing.  When it equals
        `snapshot().commit`, a `sync` would bring nothing new."""
        ref = f"refs/heads/{self.branch}"
        return self._clone.ls_remote(time.monotonic(), ref).get(ref, "")

    def log(self, path: str | None = None, limit: int = 20) -> list[dict[str, str]]:
        """Recent commits on the remote tip (optionally touching `path`), newest first; a
        shallow clone knows only the commits it fetched."""
        return self._clone.log(path, limit)

    # -- writing -----------------------------------------------------------------------

    def transact(self, change: Change, message: str, *,
                 deadline: float | None = None) -> TransactResult:
        """Apply `change` to the remote tip and push it; see the module docstring."""
        give_up = time.monotonic() + (self.deadline if deadline is None else deadline)
        if self._guard is not None:
            change = _guarded(change, self._guard)
        with self.locked():
            if callable(change):
                return self._compare_and_set(change, message, give_up)
            return inbox.submit(self._clone, tuple(change), message, give_up)

    def carry_orphans(self) -> TransactResult:
        """Carry intents whose writers died before they landed (the agent calls this)."""
        with self.locked():
            return inbox.carry_orphans(self._clone)

    # -- refs outside main -------------------------------------------------------------

    def publish(self, ref: str, text: str) -> None:
        """Point the remote's `ref` (outside refs/heads) at a parentless commit whose
        message is `text`.  The same text is always the same commit, so a writer that
        cycles through a few texts adds no objects after the first round.  Takes no lock:
        it touches no local ref."""
        sha = self._clone.commit_text(text, timeless=True)
        try:
            self._clone.push("origin", f"+{sha}:{ref}")
        except RemoteMoved as error:  # another writer of the same ref: its business
            raise GitError(f"cannot publish {ref}: {error}") from None

    def refs(self, pattern: str) -> dict[str, str]:
        """The remote's refs matching `pattern` (ref -> sha), asked once: writes nothing
        locally, takes no lock."""
        return self._clone.ls_remote(time.monotonic(), pattern)

    def _compare_and_set(self, change: Callable[[Snapshot], Sequence[Op]], message: str,
                         give_up: float) -> TransactResult:
        delays = backoffs()
        attempts = 0
        while True:
            attempts += 1
            delay = next(delays)
            _, intents = inbox.pending(self._clone, give_up)
            try:
                tip = self._clone.fetch([i.ref for i in intents])
            except RemoteMoved:
                pass  # an intent was carried meanwhile: read the inbox again
            else:
                snapshot = self._clone.snapshot(tip)
                ops = tuple(change(snapshot))
                changed = affected(snapshot.read, ops)
                if not changed:
                    return TransactResult(None, attempts=attempts - 1)
                commit = inbox.land(self._clone, tip, ops, message, intents)
                if commit is not None:
                    return TransactResult(commit, attempts, len(intents), changed)
            if time.monotonic() + delay > give_up:
                raise GitError(f"gave up pushing '{message}' to {self.url} after "
                               f"{attempts} attempts: the remote kept moving")
            time.sleep(delay)


def _guarded(change: Change, guard: Guard) -> Callable[[Snapshot], Sequence[Op]]:
    def change_if_allowed(tip: Snapshot) -> Sequence[Op]:
        guard(tip)
        return change(tip) if callable(change) else change

    return change_if_allowed
