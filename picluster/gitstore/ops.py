"""Ops: the changes a transaction lands (Put, Create, Remove), what they do to a commit's
files, and their encoding inside an intent."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath

__all__ = ["Create", "Files", "Op", "Put", "Remove", "affected", "check_path", "decode_ops",
           "encode_ops"]

Read = Callable[[str], str | None]  # a path's content in some commit, None: absent


def check_path(path: str) -> str:
    """`path` itself, when it is a plain relative path inside the repository: any name
    git can hold (a backslash is a plain character to git), but no way out of the tree."""
    parts = PurePosixPath(path).parts
    if (not parts or path.startswith("/") or ".." in parts or "." in parts
            or parts[0] == ".git" or "\0" in path or path != "/".join(parts)):
        raise ValueError(f"'{path}' is not a plain relative path inside the repository")
    try:  # a name git holds that is not UTF-8 is read with surrogate escapes
        path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"{path!a} is not a name git can hold") from None
    return path


@dataclass(frozen=True)
class _Op:
    path: str

    def __post_init__(self) -> None:
        check_path(self.path)


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


def encode_ops(ops: Sequence[Op]) -> list[dict[str, str]]:
    names = {cls: name for name, cls in _OPS.items()}
    return [{"op": names[type(op)], **{k: v for k, v in vars(op).items() if v is not None}}
            for op in ops]


def decode_ops(items: list[dict[str, str]]) -> list[Op]:
    """The ops `encode_ops` encoded; ValueError for anything else (an intent is text
    anyone who can push may have written)."""
    if not isinstance(items, list):
        raise ValueError("ops are a list")
    ops: list[Op] = []
    for item in items:
        if not isinstance(item, dict) or item.get("op") not in _OPS \
                or not all(isinstance(v, str) for v in item.values()):
            raise ValueError(f"not an op: {str(item)[:80]}")
        fields = {k: v for k, v in item.items() if k != "op"}
        try:
            ops.append(_OPS[item["op"]](**fields))
        except TypeError:
            raise ValueError(f"not an op: {str(item)[:80]}") from None
    return ops


def affected(read: Read, ops: Iterable[Op]) -> tuple[str, ...]:
    """The paths `ops` would change in the commit `read` reads (empty: a no-op)."""
    return tuple(sorted({op.path for op in ops if op.applies_to(read(op.path))}))


class Files:
    """A commit's files as batches of ops, applied one after the other, leave them."""

    def __init__(self, read: Read) -> None:
        # Each path is read from git once, however many ops and batches touch it.
        self._read = cache(read)
        self._after: dict[str, str | None] = {}  # path -> content after the ops so far

    def apply(self, ops: Iterable[Op]) -> bool:
        """Apply `ops` in order; True when any of them applied."""
        touched = False
        for op in ops:
            current = self._after[op.path] if op.path in self._after else self._read(op.path)
            if op.applies_to(current):
                self._after[op.path] = None if isinstance(op, Remove) else op.content
                touched = True
        return touched

    def changed(self) -> dict[str, str | None]:
        """Each path whose content now differs from the commit's: its content (None: gone)."""
        return {path: content for path, content in self._after.items()
                if content != self._read(path)}
