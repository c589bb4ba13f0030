"""Snapshot: a read-only view of one commit of the cluster repository."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import git

from picluster.bounded import check_size
from picluster.gitstore.ops import check_path

__all__ = ["Snapshot"]


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
        directory, _, name = check_path(path).rpartition("/")
        with self.mutex:
            return self._entries(directory).get(name)

    def read(self, path: str, *, max_size: int | None = None) -> str | None:
        """The text of `path`, or None when it does not exist (or is not a file).
        With `max_size`, a file of more bytes is refused (`LimitError`) unread."""
        item = self._item(path)
        if not isinstance(item, git.Blob):
            return None
        with self.mutex:
            if max_size is not None:
                check_size(item.size, max_size)
            return item.data_stream.read().decode("utf-8", errors="replace")

    def exists(self, path: str) -> bool:
        """True when anything (a file, a directory, a submodule) is at `path`."""
        return self._item(path) is not None

    def is_regular_file(self, path: str) -> bool:
        """True for a plain file (not a symlink, submodule or directory)."""
        item = self._item(path)
        return isinstance(item, git.Blob) and item.mode & 0o170000 == 0o100000

    def listdir(self, path: str, *, files: bool = False) -> list[str]:
        """Names directly under directory `path` (only files, with `files`), sorted;
        [] when it does not exist."""
        check_path(path)
        with self.mutex:  # a file or a missing directory has no entries
            return sorted(name for name, entry in self._entries(path).items()
                          if not files or isinstance(entry, git.Blob))
